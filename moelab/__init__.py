"""moelab: a laboratory for the scaling laws of Mixture-of-Experts language models.

Importing the package is cheap (no JAX import) and has no side effect. ``enable_compilation_cache()`` points
JAX's persistent compilation cache at a user cache folder so that repeated runs of the same shapes skip XLA
compilation; a run turns it on where it starts (the ``moelab`` command, ``moelab.train.run_training``, the
test suite's conftest). Override with the environment:

- ``MOELAB_CACHE_DIR``: root of moelab's caches (default ``$XDG_CACHE_HOME/moelab`` or ``~/.cache/moelab``);
- ``JAX_COMPILATION_CACHE_DIR``: JAX's own variable wins when set;
- ``MOELAB_JAX_CACHE=0``: leave JAX's cache settings alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__version__ = "0.1.0"

__all__ = ["__version__", "cache_dir", "enable_compilation_cache"]


def cache_dir() -> Path:
    """moelab's cache root (tokenizers, corpora, JAX compilation cache)."""
    root = os.environ.get("MOELAB_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "moelab"


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache (idempotent; a no-op when MOELAB_JAX_CACHE=0)."""
    if os.environ.get("MOELAB_JAX_CACHE", "1") == "0":
        return
    path = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir() / "jax"))
    # Cache even quick compilations: the test suite and small sweeps are made of many of them.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    if "jax" in sys.modules:  # JAX already read its environment: tell its config directly
        import jax  # already imported (a no-op): ``import moelab`` itself never imports JAX

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs",
            float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
        )
        jax.config.update(
            "jax_persistent_cache_min_entry_size_bytes",
            int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
        )
