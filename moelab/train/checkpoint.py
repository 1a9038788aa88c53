"""Checkpoints through an orbax ``CheckpointManager`` in ``RUN_DIR/checkpoints``.

A checkpoint holds the training state as a flat, index-keyed dict of arrays (``state``: the leaves of
``(params, opt_state, first_bad)`` in ``jax.tree`` order, so any pytree node type round-trips) and a small
JSON ``meta`` (step, accumulated wall and train time, a checksum per array). orbax writes each step under a
temporary name and renames it when finished, so a process killed mid-save leaves the previous checkpoint as
the latest one. Saving is asynchronous: ``save`` copies the arrays to host memory and returns; the write
overlaps training. A save the disk has no room for (free space below the arrays' size) fails at once with
ENOSPC, before anything is written.

Integrity: orbax keeps no checksum of the array data, so a flipped byte in a data file restores silently as a
wrong weight (measured: single flipped bytes came back as weights off by 7e-5 to 3e+37, no error). ``save``
therefore records, per array, two sums of its bits read as unsigned 32-bit words (plain and weighted by
position, modulo 2**32: exact integer arithmetic, the same on any mesh or process count); ``restore``
recomputes them and rejects a mismatch. ``restore_latest`` walks back from the newest checkpoint: one that
cannot be read or fails its checksums is moved aside to ``checkpoints/unreadable-STEP-TIME`` (kept for
inspection, out of orbax's way), one line on stderr says so, and the previous one is tried.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from moelab.errors import disk_full_message


class _QuietDiskFull(logging.Filter):
    """Drop orbax's traceback of an asynchronous save that failed on a full disk: the same error reaches the
    training loop at the next save or wait, and the command line reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return (
            not (exc is not None and disk_full_message(exc))
            and "os_error_code='28'" not in record.getMessage()
        )


logging.getLogger("absl").addFilter(_QuietDiskFull())


class UnreadableCheckpoint(Exception):
    """A checkpoint whose files cannot be read back as the state they were written from."""


@jax.jit
def _checksums(leaves: list) -> jax.Array:
    """[n, 2] uint32: per array, the sum of its words and their sum weighted by position (mod 2**32)."""
    out = []
    for x in leaves:
        bits = x
        if x.dtype.itemsize == 4:
            bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        elif x.dtype.itemsize == 2:
            bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
        elif x.dtype.itemsize == 1:
            bits = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
        else:  # 64-bit types need jax_enable_x64, which moelab does not use
            bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
        bits = bits.reshape(-1)
        pos = jnp.arange(1, bits.size + 1, dtype=jnp.uint32)
        out.append(jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * pos, dtype=jnp.uint32)]))
    return jnp.stack(out) if out else jnp.zeros((0, 2), jnp.uint32)


def checksums(leaves) -> list[list[int]]:
    """The per-array checksums of ``leaves`` (a list of arrays) as plain ints, for the checkpoint's meta."""
    return np.asarray(jax.device_get(_checksums(list(leaves)))).astype(int).tolist()


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.seconds = 0.0  # time spent blocking the training loop (save, wait, restore)
        self.set_aside: list[dict] = []  # checkpoints restore_latest could not use: {step, reason, moved_to}
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
        arrays = [x.copy() for x in jax.tree.leaves(state)]
        self._check_room(step, sum(x.nbytes for x in arrays))
        leaves = {f"{i:05d}": x for i, x in enumerate(arrays)}
        meta = {**meta, "checksums": checksums(arrays)}
        self._mngr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)),
        )
        self.seconds += time.perf_counter() - t

    def _check_room(self, step: int, nbytes: int) -> None:
        """ENOSPC before a save that the disk cannot hold (the arrays' size: an upper bound of what orbax
        writes, metadata aside): a clean error instead of a half-written step whose asynchronous writers fail
        one by one; the previous checkpoint stays the latest either way."""
        free = shutil.disk_usage(self.directory).free
        if free < nbytes:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device ({free / 2**20:.1f} MiB free, checkpoint step {step} needs "
                f"{nbytes / 2**20:.1f} MiB)",
                str(self.directory / str(step)),
            )

    def restore(self, step: int, like):
        """(state, meta) of checkpoint ``step``; ``like`` gives structure, shapes, dtypes and shardings.

        Every array is read straight onto the sharding of its ``like`` leaf (orbax reads only the shards each
        process needs), so a checkpoint written on another mesh or process count, or by an unsharded run,
        restores onto this one. UnreadableCheckpoint when the files cannot be read or fail their checksums."""
        t = time.perf_counter()
        leaves, treedef = jax.tree.flatten(like)
        abstract = {
            f"{i:05d}": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            for i, x in enumerate(leaves)
        }
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            out = self._mngr.restore(step, args=args)
            restored = [out["state"][f"{i:05d}"] for i in range(len(leaves))]
            meta = dict(out["meta"])
        except Exception as exc:  # noqa: BLE001 - tensorstore, JSON and orbax errors all mean "unreadable"
            raise UnreadableCheckpoint(_first_line(exc)) from exc
        expected = meta.get("checksums")
        if expected is not None:  # checkpoints written before checksums were recorded have none
            got = checksums(restored)
            bad = [i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != list(b)]
            if bad or len(got) != len(expected):
                what = f"{len(bad)} array(s), first #{bad[0]}," if bad else "the number of arrays"
                raise UnreadableCheckpoint(f"{what} differ from the checksums saved with it")
        self.seconds += time.perf_counter() - t
        return jax.tree.unflatten(treedef, restored), meta

    def restore_latest(self, like, log=None):
        """(state, meta) of the newest checkpoint that reads back intact, or None when there is none.

        Each unreadable newer checkpoint is moved aside (``unreadable-STEP-TIME``), recorded in
        :attr:`set_aside`, and reported with one line through ``log`` (default: stderr)."""
        log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        for step in sorted(self._mngr.all_steps(), reverse=True):
            try:
                return self.restore(step, like)
            except UnreadableCheckpoint as exc:
                moved = self._move_aside(step)
                older = [s for s in self._mngr.all_steps() if s < step]
                then = f"falling back to step {max(older)}" if older else "no older checkpoint: starting over"
                log(f"checkpoint step {step} is unreadable ({exc}); moved to {moved.name}; {then}")
                self.set_aside.append({"step": step, "reason": str(exc), "moved_to": moved.name})
        return None

    def _move_aside(self, step: int) -> Path:
        src = self.directory / str(step)
        dest = self.directory / f"unreadable-{step}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        if jax.process_index() == 0 and src.exists():
            src.rename(dest)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"moelab-set-aside-{step}")
        self._mngr.reload()
        return dest

    def wait(self) -> None:
        t = time.perf_counter()
        self._mngr.wait_until_finished()
        self.seconds += time.perf_counter() - t

    def close(self) -> None:
        self.wait()
        self._mngr.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line[:200]}".rstrip(": ")
