"""Checkpoints through an orbax ``CheckpointManager`` in ``RUN_DIR/checkpoints``.

A checkpoint holds the training state as a flat, index-keyed dict of arrays (``state``: the leaves of
``(params, opt_state, first_bad)`` in ``jax.tree`` order, so any pytree node type round-trips) and a small
JSON ``meta`` (step, tokens, accumulated wall and train time). orbax writes each step under a temporary name
and renames it when finished, so a process killed mid-save leaves the previous checkpoint as the latest one.
Saving is asynchronous: ``save`` copies the arrays to host memory and returns; the write overlaps training.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.seconds = 0.0  # time spent blocking the training loop (save, wait, restore)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        t = time.perf_counter()
        # Copies: the caller donates ``state`` to the next train step, which may reuse its buffers before the
        # asynchronous write has read them (on CPU host "transfers" can alias device memory).
        leaves = {f"{i:05d}": x.copy() for i, x in enumerate(jax.tree.leaves(state))}
        self._mngr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)),
        )
        self.seconds += time.perf_counter() - t

    def restore(self, step: int, like):
        """(state, meta) of checkpoint ``step``; ``like`` gives structure, shapes, dtypes and shardings.

        Every array is read straight onto the sharding of its ``like`` leaf (orbax reads only the shards each
        process needs), so a checkpoint written on another mesh or process count, or by an unsharded run,
        restores onto this one."""
        t = time.perf_counter()
        leaves, treedef = jax.tree.flatten(like)
        abstract = {
            f"{i:05d}": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            for i, x in enumerate(leaves)
        }
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        restored = [out["state"][f"{i:05d}"] for i in range(len(leaves))]
        self.seconds += time.perf_counter() - t
        return jax.tree.unflatten(treedef, restored), dict(out["meta"])

    def wait(self) -> None:
        t = time.perf_counter()
        self._mngr.wait_until_finished()
        self.seconds += time.perf_counter() - t

    def close(self) -> None:
        self.wait()
        self._mngr.close()
