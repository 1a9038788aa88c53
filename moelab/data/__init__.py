"""Corpora, tokenizers, memory-mapped token shards and deterministic batches.

``prepare(corpus=..., ...)`` is the one call the training loop makes: it loads the corpus, gets (or trains and
caches) the tokenizer and opens (or writes once) the token shards.
"""

from __future__ import annotations

from dataclasses import dataclass

from moelab.data.batches import eval_batches, eval_windows, train_batch
from moelab.data.corpus import Corpus, default_corpus, fingerprint, load_corpus
from moelab.data.shards import TokenStore, TokenStream, build_token_store
from moelab.data.tokenizer import BPETokenizer, ByteTokenizer, get_tokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "Dataset",
    "TokenStore",
    "TokenStream",
    "build_token_store",
    "default_corpus",
    "eval_batches",
    "eval_windows",
    "fingerprint",
    "get_tokenizer",
    "load_corpus",
    "prepare",
    "train_batch",
]


@dataclass
class Dataset:
    corpus: Corpus
    tokenizer: ByteTokenizer | BPETokenizer
    store: TokenStore

    @property
    def fingerprint(self) -> str:
        return self.corpus.fingerprint


def prepare(
    corpus: str = "default",
    *,
    fmt: str = "auto",
    field: str = "text",
    tokenizer: str = "byte",
    vocab_size: int = 256,
    val_fraction: float = 0.05,
    hf_split: str = "train",
    hf_config: str | None = None,
) -> Dataset:
    """Corpus -> tokenizer -> token shards, each cached on disk after the first call."""
    c = load_corpus(corpus, fmt, field, hf_split=hf_split, hf_config=hf_config)
    tok = get_tokenizer(tokenizer, c, vocab_size)
    return Dataset(corpus=c, tokenizer=tok, store=build_token_store(c, tok, val_fraction))
