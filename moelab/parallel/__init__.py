"""Parallelism for large runs: device meshes, logical-axis sharding rules, the sharded train step, the memory
planner (``moelab plan``) and the multi-host launch helper.

Submodules (imported lazily so that ``import moelab.parallel`` does not import JAX):

- ``mesh``: the four named mesh axes ``data``, ``fsdp``, ``expert``, ``tensor`` and ``make_mesh``.
- ``rules``: logical axis name -> mesh axes, for parameters and activations; ``constrain`` for activations.
- ``chips``: accelerator specifications (HBM bytes, bf16 dense peak FLOP/s) with their sources.
- ``planner``: per-chip memory, recommended mesh, step time, tokens/day, days to train, KV cache.
- ``step``: the sharded training step (same loss and gradients as the unsharded one).
- ``remat``: rematerialisation policies.
- ``distributed``: ``initialize_distributed`` around ``jax.distributed.initialize``.
"""
