"""Sweep specifications: a YAML file -> a validated ``SweepSpec`` -> a list of ``Trial``s.

A spec (see docs/sweeps.md and sweeps/*.yaml)::

    name: demo                      # results go to RESULTS/demo/
    model: {vocab_size: 256}        # base ModelConfig fields (or `preset: NAME`), plus budget fields
    data: {...}                     # base DataConfig fields
    train: {...}                    # base TrainConfig fields
    generator: grid                 # grid | zip | isoflop
    axes:                           # lists over n_experts, shared_ratio, active_params, top_k,
      active_params: [2e5, 8e5]     #   granularity, tokens | flops, lr, batch_size, expert_lr_scale, router
      n_experts: [1, 8]
      tokens: [2e5, 8e5]
    seeds: [0]
    resources: {cpus: 1, gpus: 0, custom: {TPU: 4}}
    max_concurrency: 2
    retries: 2
    estimate: {flops_per_s: 2e9, overhead_s: 10}   # for the plan's time column

Generators (as Ray Tune's grid_search; IsoFLOP profiles of Hoffmann et al. 2022, sec. 3.2):

- ``grid``: the cross product of every axis;
- ``zip``: the i-th values of every axis together (all axes of equal length);
- ``isoflop``: for each compute budget in ``axes.flops`` and each size (crossed with the other axes), the
  tokens are derived so the run spends that budget:
  ``tokens = flops / moelab.accounting.train_flops_per_token(model, seq_len)``. The sizes are either
  ``axes.active_params`` (one list for every budget) or, with an ``isoflop:`` block, centred on each budget's
  expected optimum: ``isoflop: {sizes: 5, factor: 2, tokens_per_param: 20}`` puts ``sizes`` values a
  ``factor`` apart around the N that trains on ``tokens_per_param`` tokens per activated parameter at that
  budget (by the lab's own FLOP count; 20 is Hoffmann et al. 2022's ratio), and ``center: hunyuan-large``
  around that preset paper's N_opt(C) (``moelab.presets.paper_facts``) instead.

``checks: {min_tokens_per_param: 1, corpus_tokens: 1e10}`` states what ``moelab sweep plan`` flags: a run
under the tokens-per-parameter floor, or one that would see more than one epoch of its corpus
(``corpus_tokens``; without it the plan counts a local corpus's training tokens, see moelab.sweep.plan).

``router`` is an axis of named router recipes (``moelab.presets.ROUTERS``: softmax-aux, softmax-aux-recycle,
sigmoid-aux, aux-free, expert-choice), each a set of model fields; a run's id hashes the fields, not the name.

An axis is a list of values or a geometric grid around a centre, ``{around: X, factor: F, n: K}`` = K values
X·F^(i - (K-1)/2) (integers for ``batch_size``, ``n_experts``, ``top_k``): the LR x batch grids of
``sweeps/hyper.yaml`` cross ``lr`` and ``batch_size`` around a size (``analysis.hyper`` fits the loss optimum
of each cell). ``expert_lr_scale`` takes numbers or ``auto``.

Everything is checked before any training starts: a problem raises a one-line ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moelab.accounting import train_flops_per_token
from moelab.config import ModelConfig
from moelab.errors import ConfigError, is_int, shown
from moelab.presets import FAMILY_ARGS, ROUTERS, get_preset, paper_facts, router_fields
from moelab.sweep.runid import hash_of, run_id
from moelab.train.config import RunConfig, TrainConfig
from moelab.train.trackers import tracker_names

GENERATORS = ("grid", "zip", "isoflop")
#: ModelConfig fields that ModelConfig.from_budget derives (a preset's values give way to the budget's).
_SHAPE_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "n_shared_experts", "d_expert",
               "d_shared")
#: Axes that shape the model through ModelConfig.from_budget.
BUDGET_AXES = ("active_params", "n_experts", "shared_ratio", "top_k", "granularity")
#: Axes that set the training length.
LENGTH_AXES = ("tokens", "flops")
#: Axes that set a train field of the same name.
TRAIN_AXES = ("lr", "batch_size", "expert_lr_scale")
#: Axes of named model recipes: ``router`` takes the names of ``moelab.presets.ROUTERS``.
RECIPE_AXES = ("router",)
AXES = BUDGET_AXES + LENGTH_AXES + TRAIN_AXES + RECIPE_AXES
#: Trial order: ``longest`` estimated run first (Graham's LPT, the best makespan for the whole sweep) or
#: ``listed``, the spec's own order (a sweep grown over several sittings trains its priorities first).
ORDERS = ("longest", "listed")
TOP_KEYS = (
    "name",
    "description",
    "model",
    "data",
    "train",
    "generator",
    "axes",
    "linked",
    "seeds",
    "resources",
    "max_concurrency",
    "order",
    "retries",
    "estimate",
    "tracker",
    "isoflop",
    "checks",
)
ISOFLOP_KEYS = ("sizes", "factor", "tokens_per_param", "center")
CHECK_KEYS = ("min_tokens_per_param", "corpus_tokens")
#: Hoffmann et al. 2022's compute-optimal ratio, the default centre of an isoflop size grid.
CHINCHILLA_TOKENS_PER_PARAM = 20.0
#: The default floor of ``checks.min_tokens_per_param``: fewer tokens than activated parameters.
DEFAULT_MIN_TOKENS_PER_PARAM = 1.0
RESOURCE_KEYS = ("cpus", "gpus", "custom")
ESTIMATE_KEYS = ("flops_per_s", "overhead_s")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_INT_AXES = ("n_experts", "top_k", "batch_size")
_AROUND_KEYS = ("around", "factor", "n")

#: Sustained training FLOP/s of one CPU core on the tiny models of the CPU ladder: about 8.6e9 measured on the
#: 2-core machine (2026-11-28, 3e4 activated, 4 experts, 1 thread, a loaded machine); 5e9 leaves room for
#: smaller, less efficient shapes. Finished runs of the same sweep replace it (moelab.sweep.plan.calibrate).
DEFAULT_FLOPS_PER_S_PER_CPU = 5.0e9
#: Per-trial fixed cost: worker start, data preparation, compilation (less with a warm compilation cache).
DEFAULT_OVERHEAD_S = 15.0


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for: ``num_cpus``, ``num_gpus`` and custom resources (e.g. ``{"TPU": 4}``)."""

    cpus: float = 1.0
    gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.custom:
            opts["resources"] = dict(self.custom)
        return opts

    @property
    def threads(self) -> int:
        """Threads a trial may use for XLA/BLAS: its CPUs, at least one."""
        return max(1, int(math.floor(self.cpus)))


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: its configuration, content-hashed id and the axis values that produced it."""

    run_id: str
    run: Any  # moelab.train.RunConfig
    point: dict[str, Any]

    @property
    def model(self) -> Any:
        return self.run.model


@dataclass(frozen=True)
class SweepSpec:
    name: str
    model: dict[str, Any]
    data: dict[str, Any]
    train: dict[str, Any]
    generator: str = "grid"
    axes: dict[str, list[Any]] = field(default_factory=dict)
    linked: tuple[tuple[str, ...], ...] = ()
    seeds: tuple[int, ...] = ()
    resources: Resources = field(default_factory=Resources)
    max_concurrency: int | None = None
    order: str = "longest"  # longest estimated run first (best makespan) or "listed" (the spec's own order)
    retries: int = 2
    flops_per_s: float | None = None
    overhead_s: float = DEFAULT_OVERHEAD_S
    description: str = ""
    source: str = "<spec>"
    tracker: tuple[str, ...] = ()  # live trackers (moelab.train.trackers): not part of any run id
    isoflop: dict[str, Any] | None = None  # the centring of isoflop size grids (None: axes.active_params)
    checks: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<spec>") -> SweepSpec:
        err = _Errors(source)
        if not isinstance(raw, dict):
            raise err("", f"a sweep spec must be a mapping of keys, got {type(raw).__name__}")
        unknown = [k for k in raw if k not in TOP_KEYS]
        if unknown:
            raise err(str(unknown[0]), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise err("name", f"must be a folder-safe name (letters, digits, _ . -), got {name!r}")
        sections = {}
        for key in ("model", "data", "train"):
            value = raw.get(key) or {}
            if not isinstance(value, dict):
                raise err(key, f"must be a mapping of {key} settings, got {type(value).__name__}")
            sections[key] = {str(k): v for k, v in value.items()}
        generator = raw.get("generator", "grid")
        if generator not in GENERATORS:
            raise err("generator", f"must be one of {'|'.join(GENERATORS)}, got {generator!r}")
        axes = _parse_axes(raw.get("axes") or {}, err)
        linked = _parse_linked(raw.get("linked"), generator, axes, err)
        isoflop = _parse_isoflop(raw.get("isoflop"), generator, axes, linked, err)
        checks = _parse_checks(raw.get("checks"), err)
        _check_axes(generator, axes, linked, sections, err, centred=isoflop is not None)
        _check_repeats(generator, axes, linked, err)
        seeds = _parse_seeds(raw.get("seeds"), err)
        resources = _parse_resources(raw.get("resources") or {}, err)
        max_conc = raw.get("max_concurrency")
        if max_conc is not None and not (is_int(max_conc) and max_conc >= 1):
            raise err("max_concurrency", f"must be an integer >= 1, got {max_conc!r}")
        order = raw.get("order", "longest")
        if order not in ORDERS:
            raise err("order", f"must be one of {', '.join(ORDERS)}, got {order!r}")
        retries = raw.get("retries", 2)
        if not (is_int(retries) and retries >= 0):
            raise err("retries", f"must be an integer >= 0, got {retries!r}")
        estimate = raw.get("estimate") or {}
        if not isinstance(estimate, dict):
            raise err("estimate", "must be a mapping with flops_per_s and/or overhead_s")
        for k in estimate:
            if k not in ESTIMATE_KEYS:
                raise err(f"estimate.{k}", f"unknown key; allowed: {', '.join(ESTIMATE_KEYS)}")
        flops_per_s = _number(estimate.get("flops_per_s"), "estimate.flops_per_s", err, positive=True)
        overhead = _number(estimate.get("overhead_s", DEFAULT_OVERHEAD_S), "estimate.overhead_s", err)
        description = raw.get("description") or ""
        try:
            tracker = tracker_names(raw.get("tracker"), "tracker")
        except ConfigError as exc:
            raise err("", str(exc)) from None
        return cls(
            name=name,
            model=sections["model"],
            data=sections["data"],
            train=sections["train"],
            generator=generator,
            axes=axes,
            linked=linked,
            seeds=seeds,
            resources=resources,
            max_concurrency=max_conc,
            order=order,
            retries=retries,
            flops_per_s=flops_per_s,
            overhead_s=float(overhead),
            description=str(description),
            source=source,
            tracker=tracker,
            isoflop=isoflop,
            checks=checks,
        )

    # ------------------------------------------------------------------ expansion
    def points(self) -> list[dict[str, Any]]:
        """The axis values of every trial, in a stable order (generator order, then seeds)."""
        if self.generator == "isoflop" and self.isoflop is not None:
            return self._centred_points()
        # Axes in one group vary together (zip); groups are crossed (grid). zip = one group of every axis;
        # isoflop crosses like grid and derives tokens afterwards.
        if self.generator == "zip":
            groups = [tuple(self.axes)] if self.axes else []
        else:
            in_group = {a for g in self.linked for a in g}
            groups = [tuple(g) for g in self.linked] + [(a,) for a in self.axes if a not in in_group]
        values = [list(zip(*(self.axes[a] for a in g), strict=True)) for g in groups]
        names = [a for g in groups for a in g]
        combos = [tuple(v for part in combo for v in part) for combo in itertools.product(*values)]
        seeds = self.seeds or (None,)
        out = []
        for combo in combos:
            for seed in seeds:
                point = {a: dict(zip(names, combo, strict=True))[a] for a in self.axes}
                if seed is not None:
                    point["seed"] = seed
                out.append(point)
        return out

    def _combos(self, axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """The cross product of ``axes`` (linked groups varying together) as point dicts."""
        in_group = {a for g in self.linked for a in g}
        groups = [tuple(g) for g in self.linked if all(a in axes for a in g)]
        groups += [(a,) for a in axes if a not in in_group]
        values = [list(zip(*(axes[a] for a in g), strict=True)) for g in groups]
        names = [a for g in groups for a in g]
        out = []
        for combo in itertools.product(*values):
            flat = dict(zip(names, (v for part in combo for v in part), strict=True))
            out.append({a: flat[a] for a in axes})
        return out

    def _centred_points(self) -> list[dict[str, Any]]:
        """isoflop with an ``isoflop:`` block: per budget, ``sizes`` activated sizes ``factor`` apart around
        the budget's expected optimum (:meth:`expected_optimum`)."""
        iso = self.isoflop or {}
        n, factor = int(iso.get("sizes", 5)), float(iso.get("factor", 2.0))
        others = {a: v for a, v in self.axes.items() if a != "flops"}
        out = []
        for combo in self._combos(others):
            for c in self.axes["flops"]:
                centre = self.expected_optimum(c, combo)
                for i in range(n):
                    size = float(f"{centre * factor ** (i - (n - 1) / 2):.3g}")
                    for seed in self.seeds or (None,):
                        point = {**combo, "flops": c, "active_params": size}
                        if seed is not None:
                            point["seed"] = seed
                        out.append(point)
        return out

    def expected_optimum(self, flops: float, combo: dict[str, Any] | None = None) -> float:
        """The activated size an isoflop grid is centred on at compute ``flops``: the ``center`` preset
        paper's N_opt(C), or the N that trains on ``tokens_per_param`` tokens per activated parameter by the
        lab's own FLOP count (a fixed point of N = sqrt(C / (cost per token per parameter * ratio)))."""
        iso = self.isoflop or {}
        if iso.get("center"):
            return float(paper_facts(iso["center"]).allocation(flops)[0])
        ratio = float(iso.get("tokens_per_param", CHINCHILLA_TOKENS_PER_PARAM))
        n = math.sqrt(flops / (6.0 * ratio))
        err = _Errors(self.source)
        for _ in range(12):
            run = build_run(self, {**(combo or {}), "flops": flops, "active_params": n}, err)
            per_param = run.flops_per_token() / n  # the lab's cost per token, per nominal parameter
            n_new = math.sqrt(flops / (per_param * ratio))
            if abs(math.log(n_new / n)) < 1e-4:
                return n_new
            n = n_new
        return n

    def trials(self) -> list[Trial]:
        """Every distinct run of the sweep (duplicate configurations collapse into one, first wins)."""
        trials: dict[str, Trial] = {}
        err = _Errors(self.source)
        for point in self.points():
            run = build_run(self, point, err)
            rid = run_id(run)
            trials.setdefault(hash_of(rid), Trial(run_id=rid, run=run, point=point))
        return list(trials.values())


# ---------------------------------------------------------------------- building one run
def build_run(spec: SweepSpec, point: dict[str, Any], err: _Errors | None = None) -> Any:
    """The RunConfig of one point: base sections + axis values (model through from_budget when budgeted)."""
    err = err or _Errors(spec.source)
    where = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
    user = dict(spec.model)
    preset = user.pop("preset", None)
    if "router" in point:  # a router recipe's fields (moelab.presets.ROUTERS)
        user.update(router_fields(point["router"]))
    try:
        base: dict[str, Any] = {}
        if preset is not None:
            try:
                preset_cfg = get_preset(str(preset))
            except ConfigError as exc:
                raise err("model.preset", _one_line(exc)) from None
            # A budget rebuild of a preset keeps its expert layout, shared ratio and granularity.
            base = preset_cfg.to_dict()
            nominal = FAMILY_ARGS.get(str(preset), {})
            base.update(shared_ratio=nominal.get("shared_ratio", round(preset_cfg.shared_ratio, 2)),
                        granularity=nominal.get("granularity", round(preset_cfg.family_granularity, 2)))
            kv_group = preset_cfg.n_heads // preset_cfg.n_kv_heads
        given = {**user, **{k: point[k] for k in BUDGET_AXES if k in point}}  # what the spec itself sets
        budget = {k: given.get(k, base.get(k)) for k in BUDGET_AXES if k in given or k in base}
        if "active_params" in budget:
            kept = {k: v for k, v in base.items() if k not in BUDGET_AXES and k not in _SHAPE_KEYS}
            if preset is not None:
                kept["kv_group"] = kv_group
            rest = {**kept, **{k: v for k, v in user.items() if k not in BUDGET_AXES}}
            model = ModelConfig.from_budget(**budget, **rest)
        else:
            extra = [k for k in ("shared_ratio", "granularity") if k in given]
            if extra:
                raise err(
                    f"axes.{extra[0]}" if extra[0] in point else f"model.{extra[0]}",
                    "needs active_params (in model or axes) to build the model from a budget",
                )
            fields = {k: v for k, v in base.items() if k not in ("shared_ratio", "granularity")}
            fields.update({k: v for k, v in given.items() if k != "active_params"})
            model = ModelConfig.from_dict(fields)
    except ConfigError as exc:
        if str(exc).startswith(spec.source):
            raise
        key = _key_of(str(exc), point)
        raise err(key, f"{_one_line(exc)} (at {where or 'the base config'})") from None
    except TypeError as exc:  # an unknown keyword reached ModelConfig
        raise err("model", f"{_one_line(exc)}") from None

    data = dict(spec.data)
    train = dict(spec.train)
    if "seed" in point:
        train["seed"] = point["seed"]
    train.update({k: point[k] for k in TRAIN_AXES if k in point})
    if "tokens" in point:
        train["tokens"] = int(round(point["tokens"]))
    elif "flops" in point:
        train["tokens"] = max(1, int(round(point["flops"] / train_flops_per_token(model, _seq_len(train)))))
    try:
        return RunConfig.from_dict({"model": model.to_dict(), "data": data, "train": train})
    except ConfigError as exc:
        message = _one_line(exc)
        match = re.match(r"^(data|train|model)\.([A-Za-z_]+)", message)
        key = f"{match.group(1)}.{match.group(2)}" if match else "train"
        raise err(key, f"{message} (at {where or 'the base config'})") from None
    except TypeError as exc:
        raise err("train", _one_line(exc)) from None


def _seq_len(train: dict) -> int:
    if "seq_len" in train:
        return int(train["seq_len"])
    return int({f.name: f.default for f in dataclasses.fields(TrainConfig)}["seq_len"])


# ---------------------------------------------------------------------- validation helpers
class _Errors:
    """Builds one-line ConfigErrors: ``SOURCE: KEY: message``."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, key: str, message: str) -> ConfigError:
        prefix = f"{self.source}: {shown(key)}: " if key else f"{self.source}: "
        return ConfigError(prefix + message)


def _parse_axes(raw: Any, err: _Errors) -> dict[str, list[Any]]:
    if not isinstance(raw, dict):
        raise err("axes", f"must be a mapping of axis -> list of values, got {type(raw).__name__}")
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if key == "seeds" or key == "seed":
            raise err(f"axes.{key}", "seeds are a top-level key (seeds: [0, 1]), crossed with every trial")
        if key not in AXES:
            raise err(f"axes.{key}", f"unknown axis; allowed: {', '.join(AXES)}")
        if isinstance(values, dict):
            values = _around(values, f"axes.{key}", err)
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise err(f"axes.{key}", "must list at least one value")
        parsed = []
        if key == "router":
            axes[key] = _parse_routers(values, err)
            continue
        for v in values:
            if key == "expert_lr_scale" and v == "auto":
                parsed.append(v)
                continue
            if v is None:  # _number lets None through for optional settings; an axis value is never optional
                raise err(f"axes.{key}", "must list numbers, got an empty value (null)")
            num = _number(v, f"axes.{key}", err, positive=key not in ("shared_ratio",))
            if key in _INT_AXES:
                if num != int(num):
                    raise err(f"axes.{key}", f"must be integers, got {v!r}")
                num = int(num)
            if key == "shared_ratio" and not 0 <= num < 1:
                raise err(f"axes.{key}", f"must be in [0, 1), got {v!r}")
            parsed.append(num)
        axes[key] = parsed
    return axes


def _parse_routers(values: list, err: _Errors) -> list[str]:
    for v in values:
        if v not in ROUTERS:
            raise err("axes.router", f"unknown router {v!r}; allowed: {', '.join(ROUTERS)}")
    return [str(v) for v in values]


def _around(raw: dict, key: str, err: _Errors) -> list[float]:
    """``{around: X, factor: F, n: K}`` -> the K values X·F^(i - (K-1)/2), i = 0..K-1."""
    unknown = [k for k in raw if k not in _AROUND_KEYS]
    if unknown or "around" not in raw:
        example = "{around: 3e-3, factor: 2, n: 5}"
        raise err(key, f"a grid mapping takes {', '.join(_AROUND_KEYS)} (e.g. {example})")
    centre = _number(raw["around"], f"{key}.around", err, positive=True)
    factor = _number(raw.get("factor", 2), f"{key}.factor", err, positive=True)
    n = raw.get("n", 3)
    if not (is_int(n) and n >= 1):
        raise err(f"{key}.n", f"must be an integer >= 1, got {n!r}")
    if factor == 1 and n > 1:
        raise err(f"{key}.factor", "must differ from 1 for more than one value")
    values = [centre * factor ** (i - (n - 1) / 2) for i in range(n)]
    if key.split(".")[-1] in _INT_AXES:
        return [round(v) for v in values]
    return [float(f"{v:.6g}") for v in values]


def _parse_linked(raw: Any, generator: str, axes: dict[str, list[Any]], err: _Errors) -> tuple:
    """``linked: [[granularity, n_experts, top_k]]``: axes of a group vary together, groups are crossed."""
    if raw is None:
        return ()
    if generator == "zip":
        raise err("linked", "zip already links every axis; use generator grid or isoflop with linked")
    if not isinstance(raw, list) or not all(isinstance(g, list) for g in raw):
        raise err("linked", "must be a list of lists of axis names, e.g. [[granularity, n_experts, top_k]]")
    seen: set[str] = set()
    for i, group in enumerate(raw):
        if len(group) < 2:
            raise err(f"linked[{i}]", f"a group links two or more axes, got {group}")
        for a in group:
            if a not in axes:
                raise err(f"linked[{i}]", f"names {a!r}, which is not in axes ({', '.join(axes) or 'none'})")
            if a in seen:
                raise err(f"linked[{i}]", f"axis {a!r} is in two groups")
            seen.add(a)
            if len(axes[a]) != len(axes[group[0]]):
                raise err(
                    f"axes.{a}",
                    f"has {len(axes[a])} values but axes.{group[0]} has "
                    f"{len(axes[group[0]])} (linked axes need equal lengths)",
                )
    return tuple(tuple(g) for g in raw)


def _check_repeats(generator: str, axes: dict, linked: tuple, err: _Errors) -> None:
    """A plain axis lists each value once; linked (or zipped) axes may repeat values but not whole tuples."""
    groups = [tuple(axes)] if generator == "zip" and axes else list(linked)
    in_group = {a for g in groups for a in g}
    for key, values in axes.items():
        if key not in in_group and len(set(values)) != len(values):
            raise err(f"axes.{key}", f"has repeated values {values}")
    for g in groups:
        rows = list(zip(*(axes[a] for a in g), strict=True))
        if len(set(rows)) != len(rows):
            raise err(f"axes.{g[0]}", f"the linked values of {', '.join(g)} repeat a combination")


def _parse_isoflop(raw: Any, generator: str, axes: dict, linked: tuple, err: _Errors) -> dict | None:
    """``isoflop: {sizes, factor, tokens_per_param | center}``: centred size grids (generator isoflop)."""
    if raw is None:
        return None
    if generator != "isoflop":
        raise err("isoflop", f"centres the sizes of generator isoflop; this spec's generator is {generator}")
    if not isinstance(raw, dict):
        raise err("isoflop", "must be a mapping, e.g. {sizes: 5, factor: 2, tokens_per_param: 20}")
    for k in raw:
        if k not in ISOFLOP_KEYS:
            raise err(f"isoflop.{k}", f"unknown key; allowed: {', '.join(ISOFLOP_KEYS)}")
    if "active_params" in axes:
        raise err("axes.active_params", "give either axes.active_params or an isoflop: centring block")
    if any(a in g for g in linked for a in ("flops", "active_params")):
        raise err("linked", "a centred isoflop grid derives the sizes per budget; do not link flops")
    out: dict[str, Any] = {}
    sizes = raw.get("sizes", 5)
    if not (is_int(sizes) and sizes >= 3):
        raise err("isoflop.sizes", f"must be an integer >= 3 (a parabola needs 3 sizes), got {sizes!r}")
    out["sizes"] = sizes
    factor = _number(raw.get("factor", 2.0), "isoflop.factor", err, positive=True)
    if factor <= 1:
        raise err("isoflop.factor", f"must be > 1, got {factor!r}")
    out["factor"] = float(factor)
    if "center" in raw:
        if "tokens_per_param" in raw:
            raise err("isoflop.center", "give either center (a preset's law) or tokens_per_param, not both")
        try:
            paper_facts(str(raw["center"]))
        except ConfigError as exc:
            raise err("isoflop.center", _one_line(exc)) from None
        out["center"] = str(raw["center"])
    else:
        ratio = raw.get("tokens_per_param", CHINCHILLA_TOKENS_PER_PARAM)
        out["tokens_per_param"] = float(_number(ratio, "isoflop.tokens_per_param", err, positive=True))
    return out


def _parse_checks(raw: Any, err: _Errors) -> dict[str, float]:
    """``checks: {min_tokens_per_param, corpus_tokens}``: what ``moelab sweep plan`` flags."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise err("checks", f"must be a mapping with {', '.join(CHECK_KEYS)}")
    for k in raw:
        if k not in CHECK_KEYS:
            raise err(f"checks.{k}", f"unknown key; allowed: {', '.join(CHECK_KEYS)}")
    floor = raw.get("min_tokens_per_param", DEFAULT_MIN_TOKENS_PER_PARAM)
    out = {"min_tokens_per_param": float(_number(floor, "checks.min_tokens_per_param", err, positive=True))}
    if raw.get("corpus_tokens") is not None:
        tokens = _number(raw["corpus_tokens"], "checks.corpus_tokens", err, positive=True)
        out["corpus_tokens"] = float(tokens)
    return out


def _check_axes(
    generator: str, axes: dict, linked: tuple, sections: dict[str, dict], err: _Errors, centred: bool = False
) -> None:
    if "tokens" in axes and "flops" in axes:
        raise err(
            "axes.flops", "give either axes.tokens or axes.flops, not both (tokens are derived from flops)"
        )
    if generator == "zip" and axes:
        lengths = {k: len(v) for k, v in axes.items()}
        first = next(iter(lengths))
        for k, n in lengths.items():
            if n != lengths[first]:
                raise err(
                    f"axes.{k}",
                    f"has {n} values but axes.{first} has {lengths[first]} (zip needs equal lengths)",
                )
    if generator == "isoflop":
        if "tokens" in axes:
            raise err("axes.tokens", "isoflop derives tokens from axes.flops; remove axes.tokens")
        for k in ("flops",) if centred else ("flops", "active_params"):
            if k not in axes:
                what = "compute budgets" if k == "flops" else "sizes (or an isoflop: centring block)"
                raise err(f"axes.{k}", f"isoflop needs a list of {what}")
    for key in axes:
        if key in BUDGET_AXES and key in sections["model"]:
            raise err(f"model.{key}", f"is also an axis (axes.{key}); keep one")
    if "router" in axes:  # a recipe sets its fields; the base model may not set them too
        for name in axes["router"]:
            clash = [k for k in ROUTERS[name] if k in sections["model"]]
            if clash:
                raise err(f"model.{clash[0]}", f"is also set by axes.router ({name}); keep one")
    for key in TRAIN_AXES:
        if key in axes and key in sections["train"]:
            raise err(f"train.{key}", f"is also an axis (axes.{key}); keep one")
    for budget_key in ("tokens", "flops"):
        if budget_key in sections["train"] and ("tokens" in axes or "flops" in axes):
            axis = "tokens" if "tokens" in axes else "flops"
            raise err(f"train.{budget_key}", f"is also set by axes.{axis}; keep one")
    for k in ("shared_ratio", "granularity"):
        if (
            (k in axes or k in sections["model"])
            and "active_params" not in axes
            and "active_params" not in sections["model"]
            and not centred
        ):
            where = f"axes.{k}" if k in axes else f"model.{k}"
            raise err(where, "needs active_params (in model or axes) to build the model from a budget")
    together = any("n_experts" in g and "top_k" in g for g in linked)
    if "n_experts" in axes and "top_k" in axes and generator != "zip" and not together:
        bad = [(e, k) for e in axes["n_experts"] for k in axes["top_k"] if k > e]
        if bad:
            raise err("axes.top_k", f"top_k={bad[0][1]} exceeds n_experts={bad[0][0]} in the grid")


def _parse_seeds(raw: Any, err: _Errors) -> tuple[int, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raw = [raw]
    if not raw or not all(is_int(s) and s >= 0 for s in raw):
        raise err("seeds", f"must be a list of integers >= 0, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise err("seeds", f"has repeated values {raw}")
    return tuple(raw)


def _parse_resources(raw: Any, err: _Errors) -> Resources:
    if not isinstance(raw, dict):
        raise err("resources", f"must be a mapping with {', '.join(RESOURCE_KEYS)}")
    for k in raw:
        if k not in RESOURCE_KEYS:
            raise err(
                f"resources.{k}", f"unknown key; allowed: {', '.join(RESOURCE_KEYS)} (custom: {{TPU: 4}})"
            )
    cpus = _number(raw.get("cpus", 1), "resources.cpus", err, positive=True)
    gpus = _number(raw.get("gpus", 0), "resources.gpus", err)
    if gpus < 0:
        raise err("resources.gpus", f"must be >= 0, got {gpus}")
    if gpus > 1 and gpus != int(gpus):
        raise err("resources.gpus", f"must be a fraction <= 1 or a whole number, got {gpus}")
    custom = raw.get("custom") or {}
    if not isinstance(custom, dict):
        raise err("resources.custom", "must be a mapping of Ray resource name -> amount, e.g. {TPU: 4}")
    parsed = {}
    for name, amount in custom.items():
        if name in ("CPU", "GPU", "memory"):
            raise err(f"resources.custom.{name}", "use resources.cpus / resources.gpus for CPUs and GPUs")
        parsed[str(name)] = _number(amount, f"resources.custom.{name}", err, positive=True)
    return Resources(cpus=cpus, gpus=gpus, custom=parsed)


def _number(value: Any, key: str, err: _Errors, positive: bool = False) -> Any:
    """A YAML number; strings like ``1e7`` (YAML 1.1 reads them as strings) are accepted too."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise err(key, f"must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            raise err(key, f"must be a number, got {value!r}") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise err(key, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise err(key, f"must be > 0, got {value!r}")
    if (
        isinstance(value, float)
        and value == int(value)
        and abs(value) >= 1
        and key.split(".")[-1] in ("active_params", "tokens", "n_experts", "top_k", "batch_size")
    ):
        value = int(value)
    return value


def _key_of(message: str, point: dict[str, Any]) -> str:
    """Which spec key a ModelConfig error is about: the first axis named in the message, else ``model``."""
    for name in AXES:
        if name in message and name in point:
            return f"axes.{name}"
    match = re.match(r"^([a-z_]+) ", message)
    return f"model.{match.group(1)}" if match else "model"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fmt(value: Any) -> str:
    if isinstance(value, float) and (abs(value) >= 1e4 or 0 < abs(value) < 1e-3):
        return f"{value:.3g}"
    if isinstance(value, int) and abs(value) >= 1e5:
        return f"{value:.3g}"
    return str(value)
