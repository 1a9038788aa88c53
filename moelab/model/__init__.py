"""The moelab model family (Flax NNX): ``Transformer(cfg, rngs=nnx.Rngs(seed))``.

See transformer.py for the parameter tree and its logical axis names, moe.py / router.py / dispatch/ for the
mixture-of-experts layer, attention.py for GQA with cross-layer K/V sharing.
"""

from moelab.model.transformer import Transformer

__all__ = ["Transformer"]
