"""Parallelism for large runs: device meshes, logical-axis sharding rules, placement of a run's state, the
memory planner (``moelab plan``) and the multi-host launch helper.

Submodules (``import moelab.parallel`` itself imports none of them):

- ``mesh``: the four named mesh axes ``data``, ``fsdp``, ``expert``, ``tensor`` and ``make_mesh``.
- ``rules``: logical axis name -> mesh axes, for parameters and activations; ``activation_sharding(mesh)``
  installs the activation rules behind the model's ``constrain`` hook (``moelab.model.hooks``).
- ``chips``: accelerator specifications (HBM bytes, bf16 dense peak FLOP/s) with their sources.
- ``planner``: per-chip memory, recommended mesh, step time, tokens/day, days to train, KV cache.
- ``placement``: ``Placement(mesh)``: model, optimiser state and batches created on their shardings (the train
  step itself is ``moelab.train.step``'s, the same for every mesh).
- ``remat``: rematerialisation policies.
- ``distributed``: ``initialize_distributed`` around ``jax.distributed.initialize``.
"""
