"""Tokenizers: byte-level (256 ids) and byte-level BPE trained with Hugging Face ``tokenizers``.

Both reserve id 0 as the end-of-document token ``EOD`` that separates documents in the token streams:

- ``ByteTokenizer``: a token is one UTF-8 byte; the NUL byte (id 0), which does not occur in text corpora, is
  the document separator. ``vocab_size`` is 256.
- ``BPETokenizer``: GPT-2-style byte-level BPE (``tokenizers.pre_tokenizers.ByteLevel``) with the special
  token ``<|endoftext|>`` at id 0, trained on the corpus at the model's vocabulary size and cached on disk
  under ``moelab.cache_dir()/tokenizers/bpe-{vocab_size}-{corpus_fingerprint[:16]}.json``.

``token_bytes()`` gives the number of UTF-8 bytes each id stands for (the separator counts as one byte) so
that held-out loss can be reported in bits per byte for either tokenizer:  bpb = sum(nats) / ln 2 /
sum(bytes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moelab import cache_dir
from moelab.errors import ConfigError

TOKENIZERS = ("byte", "bpe")
EOD_ID = 0
_EOD_TEXT = "<|endoftext|>"


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256
    eod_id = EOD_ID

    @property
    def id(self) -> str:
        return "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int32)


class BPETokenizer:
    kind = "bpe"
    eod_id = EOD_ID

    def __init__(self, tok, corpus_fingerprint: str):
        self._tok = tok
        self.corpus_fingerprint = corpus_fingerprint
        self.vocab_size = tok.get_vocab_size()

    @property
    def id(self) -> str:
        return tokenizer_id("bpe", self.vocab_size, self.corpus_fingerprint)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes per id: byte-level BPE writes each byte as one printable character of its alphabet."""
        out = np.ones(self.vocab_size, dtype=np.int32)
        for token, idx in self._tok.get_vocab().items():
            if token != _EOD_TEXT:
                out[idx] = len(token)
        return out


def _train_bpe(documents, vocab_size: int):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_EOD_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer, length=len(documents))
    return tok


def tokenizer_id(kind: str, vocab_size: int, corpus_fingerprint: str) -> str:
    """The id a tokenizer's token store is named by, known without training it (``moelab sweep plan``)."""
    return "byte" if kind == "byte" else f"bpe{vocab_size}-{corpus_fingerprint[:16]}"


def bpe_cache_path(vocab_size: int, corpus_fingerprint: str) -> Path:
    return cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{corpus_fingerprint[:16]}.json"


def get_tokenizer(kind: str, corpus=None, vocab_size: int = 256):
    """The tokenizer of ``kind`` for ``corpus`` at the model's ``vocab_size`` (BPE trained once, then
    cached)."""
    if kind not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer: {kind!r} is not one of {', '.join(TOKENIZERS)}")
    if kind == "byte":
        if vocab_size != 256:
            raise ConfigError(
                f"model.vocab_size={vocab_size} does not match the byte tokenizer's 256 ids; "
                "set model.vocab_size=256 or data.tokenizer=bpe"
            )
        return ByteTokenizer()
    if vocab_size <= 257:
        raise ConfigError(
            f"model.vocab_size={vocab_size} is too small for BPE (needs > 257: 256 bytes + end-of-document); "
            "use data.tokenizer=byte with vocab_size=256"
        )
    path = bpe_cache_path(vocab_size, corpus.fingerprint)
    if path.exists():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = _train_bpe(corpus.documents, vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tok.save(str(tmp))
        os.replace(tmp, path)
    if tok.token_to_id(_EOD_TEXT) != EOD_ID:
        raise ConfigError(
            f"data.tokenizer: cached tokenizer {path} does not have {_EOD_TEXT} at id 0; delete it"
        )
    return BPETokenizer(tok, corpus.fingerprint)
