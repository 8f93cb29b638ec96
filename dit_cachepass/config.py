"""User-facing configs. Field names and defaults follow cache-dit 1.5.3 so configs port
over unchanged; every config validates itself on construction and names the bad field."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence


def _fail(cls: str, name: str, value: Any, expected: str) -> None:
    raise ValueError(f"{cls}.{name}={value!r} is invalid: expected {expected}.")


def _check_int(cls: str, name: str, value: Any, lo: int, hi: Optional[int] = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        rng = f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]"
        _fail(cls, name, value, rng)


def _check_float(cls: str, name: str, value: Any, lo: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    try:
        v = float(value)  # accepts 0-d tensors like cache-dit does
    except (TypeError, ValueError):
        _fail(cls, name, value, f"a float >= {lo}")
    if math.isnan(v) or v < lo or math.isinf(v):
        _fail(cls, name, value, f"a finite float >= {lo}")


@dataclass
class DBCacheConfig:
    """Dual-Block Cache: always compute the first ``Fn_compute_blocks`` and last
    ``Bn_compute_blocks`` blocks of a loop; skip the middle while the relative L1 change
    of the Fn residual since the last computed step stays below ``residual_diff_threshold``.

    ``Fn_compute_blocks=1, Bn_compute_blocks=0`` is FBCache (first-block cache).
    Counts are clipped to the loop length at plan time (the plan reports the clipping).
    """

    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    residual_diff_threshold: float = 0.08
    max_accumulated_residual_diff_threshold: Optional[float] = None
    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    #: None (auto): calls repeating the same timestep are separate CFG branches, each with its
    #: own state; True: cache-dit's rule (calls alternate cond / uncond); False: one state.
    enable_separate_cfg: Optional[bool] = None
    cfg_compute_first: bool = False
    cfg_diff_compute_separate: bool = True
    num_inference_steps: Optional[int] = None
    steps_computation_mask: Optional[Sequence[int]] = None
    steps_computation_policy: Literal["dynamic", "static"] = "dynamic"
    # dit_cachepass additions (not in cache-dit):
    #: loop layout: "auto" lets the matcher choose (chain consecutive lists when streams
    #: pass straight through, as cache-dit does for FLUX.1), "per_list" caches each list
    #: separately, "chain" forces one loop over all consecutive main lists.
    loop_layout: Literal["auto", "per_list", "chain"] = "auto"
    #: start a new generation when the timestep input jumps back against its direction
    #: (up for count-down schedulers, down for Lumina2-style count-up ones).
    detect_new_generation: bool = True

    cache_type: str = field(default="DBCache", init=False)

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_int(name, "Fn_compute_blocks", self.Fn_compute_blocks, 1)
        _check_int(name, "Bn_compute_blocks", self.Bn_compute_blocks, 0)
        _check_float(name, "residual_diff_threshold", self.residual_diff_threshold, 0.0)
        _check_float(name, "max_accumulated_residual_diff_threshold",
                     self.max_accumulated_residual_diff_threshold, 0.0, allow_none=True)
        _check_int(name, "max_warmup_steps", self.max_warmup_steps, 0)
        _check_int(name, "warmup_interval", self.warmup_interval, 1)
        _check_int(name, "max_cached_steps", self.max_cached_steps, -1)
        _check_int(name, "max_continuous_cached_steps", self.max_continuous_cached_steps, -1)
        if self.num_inference_steps is not None:
            _check_int(name, "num_inference_steps", self.num_inference_steps, 1)
        if self.steps_computation_mask is not None:
            mask = list(self.steps_computation_mask)
            if not mask or any(v not in (0, 1) for v in mask):
                _fail(name, "steps_computation_mask", self.steps_computation_mask,
                      "a non-empty list of 0/1 values (1 = compute)")
            self.steps_computation_mask = mask
        if self.steps_computation_policy not in ("dynamic", "static"):
            _fail(name, "steps_computation_policy", self.steps_computation_policy, "'dynamic' or 'static'")
        if self.loop_layout not in ("auto", "per_list", "chain"):
            _fail(name, "loop_layout", self.loop_layout, "'auto', 'per_list' or 'chain'")
        if not self.cfg_diff_compute_separate and self.cfg_compute_first:
            _fail(name, "cfg_compute_first", True,
                  "False when cfg_diff_compute_separate=False (the CFG branch reuses the cond branch's diff, "
                  "so the cond branch must run first)")

    @property
    def threshold(self) -> float:
        return float(self.residual_diff_threshold)

    non_prune_block_ids = ()  # DBPrune's field; DBCache never prunes single blocks

    def prune_threshold(self, step_diffs: Sequence[float]) -> float:
        return self.threshold

    def update(self, **kwargs: Any) -> "DBCacheConfig":
        """Return a copy with the given fields replaced (validated again)."""
        return dataclasses.replace(self, **kwargs)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def strify(self) -> str:
        """cache-dit's compact tag, e.g. ``DBCache_F8B0_W8I1M0MC0_R0.08``."""
        s = (f"{self.cache_type}_F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}_"
             f"W{self.max_warmup_steps}I{self.warmup_interval}M{max(0, self.max_cached_steps)}"
             f"MC{max(0, self.max_continuous_cached_steps)}_R{self.threshold:g}")
        if self.steps_computation_mask is not None:
            s += f"_SCM{''.join(map(str, self.steps_computation_mask))}_{self.steps_computation_policy}"
        if self.num_inference_steps is not None:
            s += f"_N{self.num_inference_steps}"
        return s


@dataclass
class DBPruneConfig(DBCacheConfig):
    """Dynamic Block Prune: every middle block decides on its own whether to reuse its last
    residual, from the relative L1 change of its INPUT since its last computed call. The first
    ``Fn_compute_blocks``, the last ``Bn_compute_blocks`` and ``non_prune_block_ids`` always run.
    ``max_cached_steps`` caps the steps with any pruned block (cache-dit 1.5.3 has no separate
    ``max_pruned_steps``)."""

    enable_dynamic_prune_threshold: bool = False
    max_dynamic_prune_threshold: Optional[float] = None
    dynamic_prune_threshold_relax_ratio: float = 1.25
    non_prune_block_ids: Sequence[int] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.cache_type = "DBPrune"
        name = type(self).__name__
        _check_float(name, "max_dynamic_prune_threshold", self.max_dynamic_prune_threshold, 0.0, allow_none=True)
        _check_float(name, "dynamic_prune_threshold_relax_ratio", self.dynamic_prune_threshold_relax_ratio, 0.0)
        ids = list(self.non_prune_block_ids)
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
            _fail(name, "non_prune_block_ids", self.non_prune_block_ids, "a list of block indices >= 0")
        self.non_prune_block_ids = ids

    def prune_threshold(self, step_diffs: Sequence[float]) -> float:
        """cache-dit's dynamic threshold: relax the base towards the mean of the first (<= 5)
        positive diffs of this step, capped at ``max_dynamic_prune_threshold`` (2x base)."""
        base = self.threshold
        if not self.enable_dynamic_prune_threshold:
            return base
        first = [d for d in step_diffs[:5] if d > 0]
        if not first:
            return base
        relaxed = sum(first) / len(first) * self.dynamic_prune_threshold_relax_ratio
        cap = self.max_dynamic_prune_threshold if self.max_dynamic_prune_threshold is not None else 2 * base
        return max(relaxed, base) if relaxed < cap else base


def FBCacheConfig(residual_diff_threshold: float = 0.08, **kwargs: Any) -> DBCacheConfig:
    """First-Block Cache = DBCache with F1B0."""
    return DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                         residual_diff_threshold=residual_diff_threshold, **kwargs)


@dataclass
class CalibratorConfig:
    """On cached steps, predict the middle's contribution instead of reusing it unchanged.
    ``enable_calibrator``: the hidden stream; ``enable_encoder_calibrator``: the other streams;
    ``calibrator_cache_type``: forecast the middle's residual or its output."""

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_cache_type: Literal["residual", "hidden_states"] = "residual"
    calibrator_type: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.calibrator_cache_type not in ("residual", "hidden_states"):
            _fail(type(self).__name__, "calibrator_cache_type", self.calibrator_cache_type,
                  "'residual' or 'hidden_states'")


@dataclass
class TaylorSeerCalibratorConfig(CalibratorConfig):
    """TaylorSeer: a Taylor expansion built from finite differences over the last computed steps."""

    taylorseer_order: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.calibrator_type = "taylorseer"
        _check_int(type(self).__name__, "taylorseer_order", self.taylorseer_order, 0, 8)

    def strify(self) -> str:
        return f"T1O{self.taylorseer_order}"


@dataclass
class FoCaCalibratorConfig(CalibratorConfig):
    """FoCa (forecast then calibrate): a Heun-rule forecast anchored at the last computed step,
    using the anchor slope and the local slope (which includes earlier forecasts); no parameters."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.calibrator_type = "foca"

    def strify(self) -> str:
        return "FoCa"


@dataclass
class ParamsModifier:
    """Per-loop overrides, matched to a transformer's cached loops by position (in graph order).

    ``ParamsModifier(Fn_compute_blocks=4, residual_diff_threshold=0.12)`` changes only those
    fields of the base config; ``cache_config=`` replaces the whole config and
    ``calibrator_config=`` the calibrator. (cache-dit 1.5.3 merges every non-None field of a
    modifier's config, so its defaults silently overwrite the base; ours changes only what
    is named.)
    """

    cache_config: Optional[DBCacheConfig] = None
    calibrator_config: Optional[CalibratorConfig] = None
    overrides: dict = field(default_factory=dict)

    def __init__(self, cache_config: Optional[DBCacheConfig] = None,
                 calibrator_config: Optional[CalibratorConfig] = None, **overrides: Any):
        known = {f.name for f in dataclasses.fields(DBCacheConfig) if f.init}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"ParamsModifier got unknown DBCacheConfig field(s) {unknown}; "
                             f"valid fields: {sorted(known)}")
        self.cache_config, self.calibrator_config, self.overrides = cache_config, calibrator_config, overrides
        self.apply(DBCacheConfig())  # validate the overrides now, not at the first forward

    def apply(self, base: DBCacheConfig) -> DBCacheConfig:
        return dataclasses.replace(self.cache_config or base, **self.overrides)


@dataclass
class ParallelismConfig:
    """cache-dit's ``parallelism_config`` for ``enable_cache``: shard each transformer with
    diffusers' own parallelism (``enable_parallelism``) before caching it.

    ``ulysses_size`` / ``ring_size``: context parallelism (each rank holds a slice of the
    sequence); ``tp_size``: tensor parallelism (each rank holds a slice of the weights, from
    the model's ``_tp_plan``). diffusers 0.42 builds one mesh per model, so context and tensor
    parallelism are exclusive here, and the degrees must multiply to the world size (for a
    hybrid with data parallelism, build the mesh yourself and pass diffusers' own config).
    ``attention_backend``: set on the model first (context parallelism needs one that supports
    it, e.g. "native", "flash", "_native_cudnn"); ``cp_plan`` overrides the model's ``_cp_plan``.
    """

    ulysses_size: Optional[int] = None
    ring_size: Optional[int] = None
    tp_size: Optional[int] = None
    attention_backend: Optional[str] = None
    cp_plan: Optional[Any] = None
    ulysses_anything: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("ulysses_size", "ring_size", "tp_size"):
            if getattr(self, f) is not None:
                _check_int(name, f, getattr(self, f), 1)
        if self.context_parallel and self.tensor_parallel:
            raise ValueError(f"{name}: context parallelism (ulysses_size/ring_size) and tensor parallelism "
                             "(tp_size) cannot be combined in one diffusers 0.42 model (it builds one mesh); "
                             "pick one.")
        if not (self.context_parallel or self.tensor_parallel):
            raise ValueError(f"{name}: nothing to parallelize: set ulysses_size or ring_size > 1 (context "
                             "parallelism) or tp_size > 1 (tensor parallelism).")

    @property
    def context_parallel(self) -> bool:
        return (self.ulysses_size or 1) * (self.ring_size or 1) > 1

    @property
    def tensor_parallel(self) -> bool:
        return (self.tp_size or 1) > 1

    @property
    def world_size(self) -> int:
        """Ranks this config spans."""
        return (self.ulysses_size or 1) * (self.ring_size or 1) * (self.tp_size or 1)

    def strify(self) -> str:
        if self.tensor_parallel:
            return f"TP{self.tp_size}"
        return f"Ulysses{self.ulysses_size or 1}Ring{self.ring_size or 1}"
