"""Shared pieces of the training tests: a tiny MoE and a small on-disk corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moelab.config import ModelConfig
from moelab.train.config import DataConfig, RunConfig, TrainConfig

# The run-folder contract of issue 4 that sweeps and reports read, spelled out here rather than imported from
# moelab.train.metrics so that dropping a key from the trainer fails the tests.
METRIC_KEYS = frozenset({
    "step", "tokens", "loss", "lr", "grad_norm", "aux_loss", "z_loss", "load_min", "load_max",
    "dropped_frac", "recycled_frac", "tokens_per_s", "mfu",
})  # fmt: skip
SUMMARY_KEYS = frozenset({
    "status", "eval_loss", "eval_bpb", "train_loss", "steps", "tokens", "flops", "active_params",
    "total_params", "wall_time_s", "tokens_per_s", "mfu", "expert_load", "dropped_frac", "recycled_frac",
    "diverged_step", "error", "versions", "git_commit", "corpus_fingerprint", "dispatch",
})  # fmt: skip

TINY = ModelConfig(
    d_model=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=2,
    head_dim=16,
    n_experts=4,
    top_k=1,
    n_shared_experts=1,
    d_shared=32,
    d_expert=32,
    max_seq_len=128,
)


def write_corpus(folder: Path, n_docs: int = 60, seed: int = 0) -> Path:
    """A text file of ``n_docs`` paragraphs with learnable structure (repeated words, a grammar-ish order)."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "def", "return", "x", "=", "1"]
    paras = []
    for _ in range(n_docs):
        n = int(rng.integers(20, 80))
        start = int(rng.integers(0, len(words)))
        paras.append(" ".join(words[(start + i + int(rng.integers(0, 2))) % len(words)] for i in range(n)))
    path = Path(folder) / "corpus.txt"
    path.write_text("\n\n".join(paras) + "\n")
    return path


def tiny_run(corpus: Path, **train) -> RunConfig:
    defaults = dict(
        tokens=16 * 8 * 40,
        seq_len=16,
        batch_size=8,
        log_every=5,
        eval_every=20,
        checkpoint_every=20,
        eval_tokens=256,
        warmup_frac=0.1,
        # 40-step runs: a short-horizon second moment and a short cooldown learn within them (the defaults,
        # beta2 0.99 and a 20% cooldown, are for the ladder's thousand-step runs)
        beta2=0.95,
        anneal_frac=0.05,
    )
    defaults.update(train)
    return RunConfig(
        model=TINY, data=DataConfig(corpus=str(corpus), val_fraction=0.2), train=TrainConfig(**defaults)
    )
