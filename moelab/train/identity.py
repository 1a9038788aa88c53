"""What a run *is*: the canonical form of a RunConfig that its id hashes, and the upgrade of saved configs.

A run id must survive the schema growing. Hashing every field would rename every run the day a field is added
(and retrain the whole lab, orphaning committed results), so the hash is over a canonical form that leaves out
each field equal to its **baseline**: the value that reproduces the behaviour the code had before the field
existed (for the fields of the first schema, their values at commit 11da807). Adding a field with a neutral
baseline therefore keeps every existing id (Marin's executor gets the same effect from ``versioned()``).

The baseline is not the dataclass default and must never change: a default may move (a better choice for new
runs) and new runs then hash the new value explicitly, while a saved run keeps meaning what it meant. For the
same reason a saved ``config.json`` that lacks a field is read with the field's baseline, not its default
(``upgrade``): the code that wrote it behaved as the baseline says.

Every field of ModelConfig, DataConfig and TrainConfig must appear in ``FIRST_SCHEMA``, ``ADDED`` or
``NON_SEMANTIC`` (tests/test_runid.py checks it, so a new field cannot be forgotten): to add a field, append
it
to ``ADDED`` with the value that reproduces the code before it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

RUN_ID_LEN = 12

#: Fields that do not change a run's result: how often to log, evaluate, checkpoint; trackers.
NON_SEMANTIC: dict[str, tuple[str, ...]] = {
    "model": (),
    "data": (),
    "train": ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"),
}

#: The first schema (commit 11da807): every semantic field with its default then. Never edit.
FIRST_SCHEMA: dict[str, dict[str, Any]] = {
    "model": {
        "vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "head_dim": 32,
        "cla_share": 1, "qk_norm": False, "rope_theta": 10000.0, "max_seq_len": 256, "n_experts": 1,
        "top_k": 1, "n_shared_experts": 0, "d_expert": 256, "d_shared": 0, "capacity_factor": 1.25,
        "dispatch": "capacity", "overflow": "drop", "renormalize": False, "aux_loss_coef": 0.01,
        "z_loss_coef": 0.001, "tie_embeddings": True, "norm_eps": 1e-05, "init_std": 0.02,
        "dtype": "float32", "param_dtype": "float32",
    },
    "data": {
        "corpus": "default", "format": "auto", "field": "text", "tokenizer": "byte", "val_fraction": 0.05,
        "hf_split": "train", "hf_config": None,
    },
    "train": {
        "tokens": None, "flops": None, "seq_len": 128, "batch_size": 16, "lr": 0.003, "schedule": "wsd",
        "warmup_frac": 0.05, "anneal_frac": 0.05, "min_lr_ratio": 0.1, "weight_decay": 0.1, "beta1": 0.9,
        "beta2": 0.95, "eps": 1e-08, "grad_clip": 1.0, "expert_lr_scale": 1.0, "seed": 0,
        "eval_tokens": 32768,
    },
}  # fmt: skip

#: Fields added since, each with the value that reproduces the code before it (append; never edit a value).
ADDED: dict[str, dict[str, Any]] = {
    "model": {
        "recycle_gate": "kept",  # recycled gate was the overflowed expert's weight
        "router_score": "softmax",  # routers were softmax top-k with the Switch aux loss (issue 16's fields)
        "router_bias_rate": 0.0,
        "seq_aux_loss_coef": 0.0,
        "routed_scale": 1.0,  # the routed output was the gate-weighted sum of the experts, unscaled
    },
    "data": {},
    "train": {
        "eval_dropless": False,  # eval went through the training dispatch
        # the noise probe never changes the update, so any cadence reproduces the runs before it existed; the
        # field is semantic only because expert_lr_scale auto reads the measurements
        "noise_every": 20,
    },
}

#: Per section, the value of every semantic field that reproduces the behaviour before it existed.
BASELINE: dict[str, dict[str, Any]] = {s: {**FIRST_SCHEMA[s], **ADDED[s]} for s in FIRST_SCHEMA}

#: The fields of the first schema: the only ones its run ids hashed (see ``legacy_run_id``).
SCHEMA_1: dict[str, frozenset[str]] = {s: frozenset(f) for s, f in FIRST_SCHEMA.items()}


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, compact separators, floats in Python's shortest round-trip form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_default)


def semantic(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The semantic fields of a RunConfig dict (``RunConfig.to_dict()`` or an upgraded saved config)."""
    return {s: {k: v for k, v in (config.get(s) or {}).items() if k not in NON_SEMANTIC[s]} for s in BASELINE}


#: Model fields a dense model (n_experts == 1) never reads: a dense run is the same run whatever they say, so
#: a sweep that sets them for its MoE arms (dispatch, capacity, router losses) shares its dense runs.
MOE_ONLY = ("top_k", "n_shared_experts", "d_shared", "capacity_factor", "dispatch", "overflow",
            "recycle_gate", "renormalize", "aux_loss_coef", "z_loss_coef", "router_score", "router_bias_rate",
            "seq_aux_loss_coef", "routed_scale")  # fmt: skip


def canonical(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The semantic fields that differ from their baseline: what a run id hashes (for a dense model, without
    the fields only experts read)."""
    base = BASELINE
    out = {s: {k: v for k, v in fields.items() if k not in base[s] or not _same(v, base[s][k])}
           for s, fields in semantic(config).items()}  # fmt: skip
    if (config.get("model") or {}).get("n_experts", base["model"]["n_experts"]) == 1:
        out["model"] = {k: v for k, v in out["model"].items() if k not in MOE_ONLY}
    return out


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:RUN_ID_LEN]


def run_hash(config: dict[str, Any]) -> str:
    """``sha256(canonical_json(canonical(config)))[:12]``: the content hash part of a run id."""
    return digest(canonical(config))


def legacy_run_id(config: dict[str, Any]) -> str | None:
    """The id the first schema gave this run (a hash of all its semantic fields), or None when the run uses a
    field the first schema did not have at a non-baseline value (that code could not have trained it)."""
    sem = semantic(config)
    for s, fields in sem.items():
        for k, v in fields.items():
            if k not in SCHEMA_1[s] and not _same(v, BASELINE[s].get(k, _MISSING)):
                return None
    return digest({s: {k: v for k, v in fields.items() if k in SCHEMA_1[s]} for s, fields in sem.items()})


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json brought to today's schema: a missing field takes its baseline, the value that
    reproduces what the code that wrote the file did (not today's default, which may differ)."""
    out = copy.deepcopy(saved)
    for s, fields in BASELINE.items():
        section = out.get(s)
        if isinstance(section, dict):
            for k, v in fields.items():
                section.setdefault(k, v)
    return out


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (1 == 1.0 for numbers, True is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON-serialisable in a run config: {type(obj).__name__}")
