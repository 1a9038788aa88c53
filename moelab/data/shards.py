"""Token shards: a corpus tokenized once and stored as memory-mapped files, split into train and held-out
validation by document.

Layout of ``moelab.cache_dir()/tokens/{corpus_fingerprint[:16]}-{tokenizer.id}-val{val_fraction}/``::

    meta.json            shard lengths, dtype, document and byte counts of each split
    train-00000.bin ...  flat token ids (uint16 if the vocabulary fits, else uint32), documents split by EOD
    val-00000.bin ...

The folder is written under a temporary name and renamed into place (atomic); concurrent writers race
harmlessly (the loser discards its copy). Document ``i`` goes to validation when the first 8 bytes of
``sha256(f"{i}:{VAL_SEED}")`` as a fraction of 2**64 are below ``val_fraction``; at least one document goes
to each side when there are two or more documents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moelab import cache_dir
from moelab.errors import ConfigError

SHARD_TOKENS = 1 << 26  # 64 Mi tokens per shard file
VAL_SEED = 0


def val_documents(n_docs: int, val_fraction: float) -> np.ndarray:
    """Boolean mask of the documents held out for validation (deterministic in the document index)."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: {val_fraction} must be in (0, 1)")
    if n_docs < 2:
        raise ConfigError(
            f"data.corpus: {n_docs} document(s); a held-out split by document needs at least 2 "
            "(a text file is split into documents at blank lines)"
        )
    u = np.array(
        [
            int.from_bytes(hashlib.sha256(f"{i}:{VAL_SEED}".encode()).digest()[:8], "big") / 2.0**64
            for i in range(n_docs)
        ]
    )
    mask = u < val_fraction
    if not mask.any():
        mask[int(np.argmin(u))] = True
    if mask.all():
        mask[int(np.argmax(u))] = False
    return mask


class TokenStream:
    """Read-only view of one split: the concatenation of its memory-mapped shards."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int32, across shard boundaries if need be."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) outside a stream of {len(self)} tokens")
        out = np.empty(length, dtype=np.int32)
        pos, filled = start, 0
        while filled < length:
            i = int(np.searchsorted(self.offsets, pos, side="right")) - 1
            local = pos - int(self.offsets[i])
            n = min(length - filled, len(self.shards[i]) - local)
            out[filled : filled + n] = self.shards[i][local : local + n]
            filled += n
            pos += n
        return out

    def counts(self, vocab_size: int) -> np.ndarray:
        total = np.zeros(vocab_size, dtype=np.int64)
        for s in self.shards:
            for lo in range(0, len(s), SHARD_TOKENS):
                total += np.bincount(s[lo : lo + SHARD_TOKENS], minlength=vocab_size)[:vocab_size]
        return total


@dataclass
class TokenStore:
    path: Path
    meta: dict
    train: TokenStream
    val: TokenStream

    def unigram_entropy(self, vocab_size: int) -> float:
        """Entropy in nats/token of the training split's unigram distribution (the loss of a bag-of-tokens
        model)."""
        c = self.train.counts(vocab_size).astype(np.float64)
        p = c[c > 0] / c.sum()
        return float(-(p * np.log(p)).sum())


def _dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class _ShardWriter:
    def __init__(self, folder: Path, split: str, dtype):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.lengths: list[int] = []
        self._buf: list[np.ndarray] = []
        self._n = 0

    def add(self, ids: np.ndarray) -> None:
        self._buf.append(ids.astype(self.dtype))
        self._n += len(ids)
        while self._n >= SHARD_TOKENS:
            self._flush(SHARD_TOKENS)

    def _flush(self, n: int) -> None:
        flat = np.concatenate(self._buf) if self._buf else np.zeros(0, self.dtype)
        head, rest = flat[:n], flat[n:]
        head.tofile(self.folder / f"{self.split}-{len(self.lengths):05d}.bin")
        self.lengths.append(len(head))
        self._buf, self._n = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self._n or not self.lengths:
            self._flush(self._n)


def store_path(corpus, tokenizer, val_fraction: float) -> Path:
    return cache_dir() / "tokens" / f"{corpus.fingerprint[:16]}-{tokenizer.id}-val{val_fraction:g}"


def _write_store(final: Path, corpus, tokenizer, val_fraction: float) -> None:
    mask = val_documents(len(corpus.documents), val_fraction)
    dtype = _dtype(tokenizer.vocab_size)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        writers = {"train": _ShardWriter(tmp, "train", dtype), "val": _ShardWriter(tmp, "val", dtype)}
        stats = {s: {"documents": 0, "bytes": 0} for s in writers}
        eod = np.array([tokenizer.eod_id], dtype=np.int32)
        chunk = 256
        for lo in range(0, len(corpus.documents), chunk):
            docs = corpus.documents[lo : lo + chunk]
            for j, ids in enumerate(tokenizer.encode_batch(docs)):
                split = "val" if mask[lo + j] else "train"
                writers[split].add(np.concatenate([ids, eod]))
                stats[split]["documents"] += 1
                stats[split]["bytes"] += len(docs[j].encode("utf-8")) + 1
        for w in writers.values():
            w.close()
        meta = {
            "corpus_fingerprint": corpus.fingerprint,
            "corpus_meta": corpus.meta,
            "tokenizer": tokenizer.id,
            "vocab_size": tokenizer.vocab_size,
            "dtype": np.dtype(dtype).name,
            "val_fraction": val_fraction,
            "splits": {
                s: {**stats[s], "shards": writers[s].lengths, "tokens": sum(writers[s].lengths)}
                for s in writers
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def open_store(path: Path) -> TokenStore:
    meta = json.loads((path / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    streams = {}
    for split, info in meta["splits"].items():
        shards = [
            np.memmap(path / f"{split}-{i:05d}.bin", dtype=dtype, mode="r", shape=(n,))
            if n
            else np.zeros(0, dtype)
            for i, n in enumerate(info["shards"])
        ]
        streams[split] = TokenStream(shards)
    return TokenStore(path=path, meta=meta, train=streams["train"], val=streams["val"])


def build_token_store(corpus, tokenizer, val_fraction: float = 0.05) -> TokenStore:
    """Tokenize ``corpus`` once (cached by corpus fingerprint, tokenizer and split) and open it
    memory-mapped."""
    path = store_path(corpus, tokenizer, val_fraction)
    if not (path / "meta.json").exists():
        _write_store(path, corpus, tokenizer, val_fraction)
    return open_store(path)
