"""Run configuration: ``DataConfig``, ``TrainConfig`` and ``RunConfig`` (model + data + train).

All three are frozen dataclasses with ``to_dict()`` / ``from_dict()`` (JSON round-trip; unknown fields are a
``ConfigError`` naming the allowed ones). ``RunConfig.semantic_dict()`` holds the fields that change a run's
result; the sweep hashes it into run ids, and a run folder refuses to resume under a config whose semantic
dict differs. Not semantic: how often to log, evaluate and checkpoint, and how many checkpoints to keep.

Budget: ``TrainConfig.tokens`` or ``TrainConfig.flops`` (at most one; neither means ``DEFAULT_TOKENS``).
A FLOP budget becomes tokens through ``moelab.accounting.train_flops_per_token(model, seq_len)``; steps are
``tokens // (batch_size * seq_len)`` (at least one).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moelab.accounting import train_flops_per_token
from moelab.config import ModelConfig
from moelab.config import dataclass_from_dict as _from_dict
from moelab.data.corpus import FORMATS
from moelab.data.tokenizer import TOKENIZERS
from moelab.errors import ConfigError, check, is_int, is_number, shown
from moelab.presets import get_preset
from moelab.train.identity import NON_SEMANTIC, canonical, semantic, upgrade

SCHEDULES = ("cosine", "wsd", "hunyuan", "constant")
#: Schedules that end with a linear anneal over the last ``anneal_frac`` of the steps.
ANNEALED = ("wsd", "hunyuan")
DEFAULT_TOKENS = 1 << 20
#: TrainConfig fields that do not change the result (excluded from RunConfig.semantic_dict()).
NON_SEMANTIC_TRAIN = NON_SEMANTIC["train"]


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes tokens (see docs/training.md).

    ``corpus``: ``default`` (the Python standard library sources), a text file or folder, a ``.jsonl`` or
    ``.parquet`` file, or ``hf:NAME``. ``field``: the JSONL field / Parquet or HF column holding the text.
    ``tokenizer``: ``byte`` (model.vocab_size must be 256) or ``bpe`` (trained at model.vocab_size).
    """

    corpus: str = "default"
    format: str = "auto"
    field: str = "text"
    tokenizer: str = "byte"
    val_fraction: float = 0.05
    hf_split: str = "train"
    hf_config: str | None = None

    def __post_init__(self) -> None:
        check(isinstance(self.corpus, str) and self.corpus != "", "data.corpus must be a non-empty string")
        check(self.format in FORMATS, f"data.format must be one of {'|'.join(FORMATS)}, got {self.format!r}")
        check(
            self.tokenizer in TOKENIZERS,
            f"data.tokenizer must be one of {'|'.join(TOKENIZERS)}, got {self.tokenizer!r}",
        )
        check(
            is_number(self.val_fraction) and 0 < self.val_fraction < 1,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return _from_dict(cls, data, "data")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and budget. Learning-rate schedule (``moelab.train.optim.lr_schedule``):

    - ``cosine``: linear warmup over ``warmup_frac`` of the steps, cosine decay to ``min_lr_ratio * lr``;
    - ``wsd``: warmup, constant, then a linear cooldown to ``min_lr_ratio * lr`` over the last ``anneal_frac``
      of the steps (default 20%: Hägele et al. 2024 find a cooldown of >= 20% matches cosine, so runs of
      different lengths compare as in a cosine sweep);
    - ``hunyuan``: Hunyuan-Large's schedule (arXiv 2411.02265 sec. 3.3): warmup, a long gradual (cosine)
      decay to ``sqrt(min_lr_ratio) * lr``, then the final anneal over the last ``anneal_frac`` of the tokens
      to ``min_lr_ratio * lr`` (the paper: last 5% to 1/10 of the peak; set ``anneal_frac: 0.05``);
    - ``constant``: warmup then constant.

    ``beta2`` defaults to 0.99: at the small batches of a CPU ladder 0.95 distorts small-scale exponents
    (Porian et al. 2024).

    ``expert_lr_scale`` multiplies the learning rate of routed experts only (Hunyuan-Large sec. 2.2.4; see
    ``moelab.train.optim.eps_opt``); ``auto`` sets it during training from the measured noise scales of the
    expert and shared parameters (``moelab.train.noise.auto_expert_lr_scale``; 1.0 until both are measured
    after warmup). Weight decay skips norms and any 1-D parameter (biases).

    ``noise_every``: every that many steps the run measures the gradient noise scale B_simple (the two halves
    of the step's batch, ``moelab.train.noise``; about 1/noise_every of the step time); 0 never. The
    measurement never changes the update; it enters the run's identity because ``auto`` reads it.

    ``eval_dropless``: held-out loss through a dropless dispatch (every token reaches its experts), so a
    token's eval loss never depends on the rest of the eval batch or on a random recycle draw; the summary
    records the eval dispatch. (False: evaluate through the training dispatch, the first schema's behaviour.)
    """

    tokens: int | None = None
    flops: float | None = None
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    schedule: str = "wsd"
    warmup_frac: float = 0.05
    anneal_frac: float = 0.2
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0
    expert_lr_scale: float | str = 1.0
    seed: int = 0
    eval_tokens: int = 32768
    eval_dropless: bool = True
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    noise_every: int = 20

    def __post_init__(self) -> None:
        check(
            self.tokens is None or self.flops is None, "train.tokens and train.flops: give at most one budget"
        )
        check(
            self.tokens is None or (is_int(self.tokens) and self.tokens >= 1),
            f"train.tokens must be an integer >= 1, got {self.tokens!r}",
        )
        check(
            self.flops is None or (is_number(self.flops) and self.flops > 0),
            f"train.flops must be a number > 0, got {self.flops!r}",
        )
        for name in (
            "seq_len",
            "batch_size",
            "eval_tokens",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            v = getattr(self, name)
            check(is_int(v) and v >= 1, f"train.{name} must be an integer >= 1, got {v!r}")
        check(
            isinstance(self.eval_dropless, bool),
            f"train.eval_dropless must be true or false, got {self.eval_dropless!r}",
        )
        check(is_int(self.seed) and self.seed >= 0, f"train.seed must be an integer >= 0, got {self.seed!r}")
        check(
            self.schedule in SCHEDULES,
            f"train.schedule must be one of {'|'.join(SCHEDULES)}, got {self.schedule!r}",
        )
        for name in ("lr", "eps", "grad_clip"):
            v = getattr(self, name)
            check(is_number(v) and v > 0, f"train.{name} must be a number > 0, got {v!r}")
        v = self.expert_lr_scale
        check(
            v == "auto" or (is_number(v) and v > 0),
            f"train.expert_lr_scale must be a number > 0 or auto, got {v!r}",
        )
        check(
            is_int(self.noise_every) and self.noise_every >= 0,
            f"train.noise_every must be an integer >= 0 (0: never), got {self.noise_every!r}",
        )
        check(
            v != "auto" or (self.noise_every >= 1 and self.batch_size % 2 == 0),
            "train.expert_lr_scale auto needs the noise scale: train.noise_every >= 1 and an even "
            "train.batch_size",
        )
        for name in ("warmup_frac", "anneal_frac", "min_lr_ratio", "beta1", "beta2"):
            v = getattr(self, name)
            check(is_number(v) and 0 <= v <= 1, f"train.{name} must be in [0, 1], got {v!r}")
        check(
            is_number(self.weight_decay) and self.weight_decay >= 0,
            f"train.weight_decay must be a number >= 0, got {self.weight_decay!r}",
        )
        check(
            self.warmup_frac + (self.anneal_frac if self.schedule in ANNEALED else 0) <= 1,
            "train.warmup_frac + train.anneal_frac must be <= 1",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "train")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class RunConfig:
    """One training run: ``RunConfig(model, data, train)``."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(isinstance(self.model, ModelConfig), "run.model must be a ModelConfig")
        check(
            self.train.seq_len <= self.model.max_seq_len,
            f"train.seq_len={self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}",
        )
        check(
            self.train.expert_lr_scale != "auto" or self.model.n_experts > 1,
            "train.expert_lr_scale auto needs routed experts (model.n_experts > 1)",
        )
        if self.data.tokenizer == "byte":
            check(
                self.model.vocab_size == 256,
                f"model.vocab_size={self.model.vocab_size} does not match the byte tokenizer's 256 ids; "
                "set model.vocab_size=256 or data.tokenizer=bpe",
            )
        else:
            check(
                self.model.vocab_size > 257,
                f"model.vocab_size={self.model.vocab_size} is too small for data.tokenizer=bpe (needs > 257)",
            )

    # ----------------------------------------------------------------- budget
    def flops_per_token(self) -> float:
        return train_flops_per_token(self.model, self.train.seq_len)

    def budget_tokens(self) -> int:
        if self.train.flops is not None:
            return int(self.train.flops / self.flops_per_token())
        return int(self.train.tokens if self.train.tokens is not None else DEFAULT_TOKENS)

    def total_steps(self) -> int:
        return max(1, self.budget_tokens() // self.train.tokens_per_step)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": self.data.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"run config must be a mapping, got {type(data).__name__}")
        unknown = sorted(map(shown, set(data) - {"model", "data", "train"}))
        check(not unknown, f"unknown run config section(s) {', '.join(unknown)}; allowed: model, data, train")
        check("model" in data, "run config needs a 'model' section (a mapping or a preset name)")
        model = data["model"]
        if isinstance(model, str):
            model = get_preset(model)
        elif not isinstance(model, ModelConfig):
            model = ModelConfig.from_dict(model)
        return cls(
            model=model,
            data=DataConfig.from_dict(data.get("data") or {}),
            train=TrainConfig.from_dict(data.get("train") or {}),
        )

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> RunConfig:
        """A RunConfig from a saved config.json: fields it lacks take their identity baseline (the behaviour
        of the code that wrote it), not today's defaults (moelab.train.identity.upgrade)."""
        return cls.from_dict(upgrade(data) if isinstance(data, dict) else data)

    def semantic_dict(self) -> dict[str, Any]:
        """The fields that change the result (compared on resume)."""
        return semantic(self.to_dict())

    def identity(self) -> dict[str, Any]:
        """The semantic fields that differ from their baseline: what the run id hashes."""
        return canonical(self.to_dict())

    def replace(self, **sections: Any) -> RunConfig:
        return dataclasses.replace(self, **sections)


def yaml_load(text: str):
    """``yaml.safe_load`` that reads ``1e-3`` as a float (PyYAML follows YAML 1.1: a string)."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
            r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+0123456789."),
    )
    return yaml.load(text, Loader=Loader)  # noqa: S506  (a SafeLoader subclass)


def load_run_config(path: str | Path) -> RunConfig:
    """A RunConfig from a JSON or YAML file ({model: {...} | "preset", data: {...}, train: {...}})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config: {path} is not valid {path.suffix[1:] or 'JSON'} ({first})") from None
    return RunConfig.from_dict(data)
