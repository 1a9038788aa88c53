"""Deterministic batches.

A training batch is a pure function of ``(seed, step)``: ``batch_size`` windows of ``seq_len + 1`` tokens
whose start offsets are drawn uniformly (with replacement) from the training stream by a NumPy PCG64 generator
seeded with ``SeedSequence([seed, step])``. A resumed run therefore sees exactly the batches it would have
seen.

Evaluation uses a fixed set of ``n_windows`` held-out windows evenly spaced over the validation stream, the
same at every evaluation and for every run on the same data: ``n_windows = ceil(eval_tokens / seq_len)``
rounded up to a multiple of the batch size, so one compiled evaluation step serves every batch.
"""

from __future__ import annotations

import math

import numpy as np

from moelab.data.shards import TokenStream
from moelab.errors import ConfigError


def train_batch(stream: TokenStream, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
    """int32 [batch_size, seq_len + 1]: inputs are ``[:, :-1]``, targets ``[:, 1:]``."""
    high = len(stream) - seq_len  # last valid start is len - (seq_len + 1)
    if high < 1:
        raise ConfigError(
            f"train.seq_len: {seq_len} needs more than {seq_len + 1} training tokens; "
            f"the corpus has {len(stream)}"
        )
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(step)])))
    starts = rng.integers(0, high, size=batch_size)
    return np.stack([stream.window(int(s), seq_len + 1) for s in starts])


def eval_windows(stream: TokenStream, eval_tokens: int, seq_len: int, batch_size: int) -> np.ndarray:
    """Start offsets of the held-out windows used by every evaluation."""
    high = len(stream) - seq_len - 1
    if high < 0:
        raise ConfigError(
            f"train.seq_len: {seq_len} needs at least {seq_len + 1} held-out tokens; "
            f"the validation split has {len(stream)} (raise data.val_fraction or use a larger corpus)"
        )
    n = math.ceil(max(1, eval_tokens) / seq_len)
    n = math.ceil(n / batch_size) * batch_size
    return np.floor(np.linspace(0, high, n)).astype(np.int64) if n > 1 else np.zeros(1, np.int64)


def eval_batches(stream: TokenStream, starts: np.ndarray, seq_len: int, batch_size: int):
    """Yield int32 [batch_size, seq_len + 1] batches over the windows at ``starts``."""
    for lo in range(0, len(starts), batch_size):
        yield np.stack([stream.window(int(s), seq_len + 1) for s in starts[lo : lo + batch_size]])
