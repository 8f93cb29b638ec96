"""User-facing configs. Field names and defaults follow cache-dit 1.5.3 so configs port
over unchanged; every config validates itself on construction (and again in ``validate()``,
which ``dit_cachepass.compile`` calls, so fields changed after construction are checked too)
and names the bad field."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from collections.abc import Sequence as _Seq
from typing import Any, Literal, Optional, Sequence

import torch


class ConfigTypeError(TypeError, ValueError):
    """A config field of the wrong type. A ``TypeError``; also a ``ValueError``, so code that
    caught the ``ValueError`` raised for every bad field before type checks existed still works."""


def _fail(cls: str, name: str, value: Any, expected: str) -> None:
    raise ValueError(f"{cls}.{name}={value!r} is invalid: expected {expected}.")


def _type_fail(cls: str, name: str, value: Any, expected: str, hint: str = "") -> None:
    t = type(value)
    got = f"got {t.__name__}" if t.__module__ == "builtins" else f"got {t.__module__}.{t.__qualname__}"
    raise ConfigTypeError(f"{cls}.{name}={value!r} is invalid: expected {expected}, {got}"
                          + (f"; {hint}" if hint else "") + ".")


# cache-dit 1.5.3 fields with no counterpart here, and what does their job
_CACHE_DIT_ONLY = {
    "force_refresh_step_hint": "new generations are detected from the timestep (detect_new_generation=True), "
                               "dcp.enable_cache(pipe) starts one per pipeline call, and dcp.refresh(module) "
                               "forces one",
    "force_refresh_step_policy": "see force_refresh_step_hint: new generations are detected from the timestep",
    "force_reduce_calibrator_vram": "calibrator state is kept as cache-dit keeps it without that flag",
    "calibrator_kwargs": "pass the calibrator's fields directly",
    "downsample_factor": "the diff reads the whole Fn residual in the same fused pass that computes it, and the "
                         "residual is kept whole anyway (it is what a cached step's checks compare), so a strided "
                         "diff would save no memory here; drop the field",
    "important_condition_threshold": "not supported: the decision is one relative L1 diff over all tokens; to "
                                     "guard regions that change more, lower residual_diff_threshold, or use "
                                     "forecast_check=True with a calibrator (the diff is then the forecast's error)",
}


def _unknown_fields(cls: type, given: Sequence[str], who: Optional[str] = None) -> Optional[str]:
    """The message for keyword arguments ``cls`` has no field for: the closest field name (or one
    containing the name: ``threshold`` -> ``residual_diff_threshold``), or what replaces a
    cache-dit field this library does not have. None when every name is a field."""
    import difflib

    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    parts = []
    for name in given:
        if name in fields:
            continue
        if name in _CACHE_DIT_ONLY:
            parts.append(f"{name!r} is a cache-dit field dit_cachepass does not take: {_CACHE_DIT_ONLY[name]} "
                         "(docs/migration_from_cache_dit.md)")
            continue
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6) or [
            f for f in fields if name.lower() in f.lower()][:1]
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if not parts:
        return None
    return (f"{who or cls.__name__} got unexpected keyword argument(s): {'; '.join(parts)}. "
            f"{cls.__name__}'s fields: {', '.join(fields)}")


def _named_fields(cls: type) -> type:
    """A dataclass whose ``__init__`` names the closest field for a misspelt keyword argument
    (a plain dataclass raises only "unexpected keyword argument"). Applied below ``@dataclass``."""
    init = cls.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        msg = _unknown_fields(cls, list(kwargs))
        if msg is not None:
            raise TypeError(msg)
        init(self, *args, **kwargs)
    __init__.__doc__, __init__.__wrapped__ = init.__doc__, init  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _check_bool(cls: str, name: str, value: Any, allow_none: bool = False) -> None:
    if isinstance(value, bool) or (value is None and allow_none):
        return
    expected = "True, False or None" if allow_none else "a bool (True or False)"
    hint = "pass True or False, not a string" if isinstance(value, str) else "pass True or False"
    _type_fail(cls, name, value, expected, hint)


def _check_str(cls: str, name: str, value: Any, choices: Sequence[str], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}" if len(choices) > 1 \
        else repr(choices[0]) if choices else "a string"
    if not isinstance(value, str):
        _type_fail(cls, name, value, listed + (" (or None)" if allow_none else ""))
    if choices and value not in choices:
        _fail(cls, name, value, listed)


def _number_type_fail(cls: str, name: str, value: Any, expected: str, convert: str) -> None:
    if isinstance(value, bool):
        _type_fail(cls, name, value, expected, "a bool is not a number here")
    if isinstance(value, torch.Tensor):
        _type_fail(cls, name, value, expected, f"pass a Python number, e.g. {convert}(t) or t.item()")
    if isinstance(value, str):
        _type_fail(cls, name, value, expected, f"pass a number, e.g. {convert}({value!r}), not a string")
    _type_fail(cls, name, value, expected)


def _check_int(cls: str, name: str, value: Any, lo: int, hi: Optional[int] = None,
               allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    rng = f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]"
    if allow_none:
        rng += " (or None)"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _number_type_fail(cls, name, value, rng, "int")
    if value < lo or (hi is not None and value > hi):
        _fail(cls, name, value, rng)


def _check_float(cls: str, name: str, value: Any, lo: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    expected = f"a finite float >= {lo}" + (" (or None)" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _number_type_fail(cls, name, value, expected, "float")
    v = float(value)
    if math.isnan(v) or v < lo or math.isinf(v):
        _fail(cls, name, value, expected)


def _plain_numbers(config: Any) -> None:
    """Store numeric fields as Python numbers: a numpy / other ``numbers.Integral`` (not a bool)
    becomes an ``int``, a non-float ``numbers.Real`` a ``float``, so ``np.int64(2)`` passed for
    ``Fn_compute_blocks`` reads back as ``2`` (reprs, ``strify`` tags, JSON, ``==`` against
    ints and everything downstream see a plain number). Runs first in each base ``validate()``,
    over every field of the (sub)class; values of other types are left to the checks."""
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, bool) or type(v) in (int, float) or not isinstance(v, numbers.Real):
            continue
        setattr(config, f.name, int(v) if isinstance(v, numbers.Integral) else float(v))


def _check_int_list(cls: str, name: str, value: Any, expected: str) -> list:
    """A list/tuple of ints (not bools, strings or tensors); returns it as a list."""
    if isinstance(value, torch.Tensor):
        _type_fail(cls, name, value, expected, "pass a list of ints, e.g. t.tolist()")
    if isinstance(value, (str, bytes)) or not isinstance(value, _Seq):
        _type_fail(cls, name, value, expected)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            _type_fail(cls, name, value, expected, f"entry {v!r} is a {type(v).__name__}, not an int")
    return [int(v) for v in value]


@_named_fields
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
    #: a checked forecast: compare the Fn residual with the calibrator's FORECAST of it, not with
    #: the last computed step's, so a step is skipped only while the forecaster is right about the
    #: blocks it can see (its error there tracks its error on the middle). Needs a calibrator;
    #: without one the forecast is the last computed residual, i.e. plain DBCache.
    forecast_check: bool = False
    #: on the steps ``steps_computation_mask`` marks 0, skip the WHOLE transformer call (every
    #: block and the glue around them) and return the calibrator's forecast of its output (the
    #: last computed output without one). A skipped step then costs nothing, so a planned schedule
    #: computes more steps for the same FLOPs; the mask alone decides (no block runs to give a
    #: diff), so a mask is required: ``dcp.tune(..., policies=("planned",))`` plans one.
    skip_whole_call: bool = False
    #: with ``skip_whole_call``: the first computed step after skipped calls returns its output
    #: plus the skipped steps' forecast error, estimated by interpolating between the computed
    #: outputs around them, so that an Euler sampler's next update undoes the drift the forecasts
    #: caused (a deferred correction, in step units: exact for equal step sizes). Only for samplers
    #: that add ``dt * output`` per step (flow-matching Euler: FLUX, SD3, Wan, Qwen-Image); a
    #: multistep solver reuses the output and would be hurt, so verify it (``dcp.tune`` does).
    correct_skipped: bool = False
    #: with ``correct_skipped``: how far a skipped step's estimated output trusts the
    #: interpolation over its forecast. At a fraction ``w`` of the way across its gap the estimate
    #: is ``forecast + w ** power * (interpolation - forecast)``: 0 takes the interpolation
    #: everywhere (isolated skips); larger values keep the forecast near the computed step before
    #: the gap, where an extrapolation is still good and a straight line across a long gap is not
    #: (digits, 9-10 of 28 steps computed, gaps of 2-4: 0.5 gave +0.8 to +1.4 dB over 0).
    correct_skipped_power: float = 0.0

    cache_type: str = field(default="DBCache", init=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (type and range); raises ``TypeError`` / ``ValueError`` naming it.
        Runs on construction and again when the config is compiled, so fields assigned after
        construction are checked too."""
        _plain_numbers(self)
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
        _check_bool(name, "enable_separate_cfg", self.enable_separate_cfg, allow_none=True)
        _check_bool(name, "cfg_compute_first", self.cfg_compute_first)
        _check_bool(name, "cfg_diff_compute_separate", self.cfg_diff_compute_separate)
        _check_int(name, "num_inference_steps", self.num_inference_steps, 1, allow_none=True)
        if self.steps_computation_mask is not None:
            expected = "a non-empty list of 0/1 values (1 = compute)"
            mask = _check_int_list(name, "steps_computation_mask", self.steps_computation_mask, expected)
            if not mask or any(v not in (0, 1) for v in mask):
                _fail(name, "steps_computation_mask", self.steps_computation_mask, expected)
            self.steps_computation_mask = mask
        _check_str(name, "steps_computation_policy", self.steps_computation_policy, ("dynamic", "static"))
        _check_str(name, "loop_layout", self.loop_layout, ("auto", "per_list", "chain"))
        _check_bool(name, "detect_new_generation", self.detect_new_generation)
        _check_bool(name, "forecast_check", self.forecast_check)
        _check_bool(name, "skip_whole_call", self.skip_whole_call)
        if self.skip_whole_call and self.steps_computation_mask is None:
            _fail(name, "skip_whole_call", True,
                  "a steps_computation_mask with it (a skipped call runs no block, so only a planned mask can "
                  "decide; get one from dcp.tune(..., policies=('planned',)) or pass e.g. [1, 1, 0, 1, 0, ...])")
        _check_bool(name, "correct_skipped", self.correct_skipped)
        if self.correct_skipped and not self.skip_whole_call:
            _fail(name, "correct_skipped", True, "False without skip_whole_call=True (only skipped whole calls "
                  "leave a forecast error in the sampler's state to correct)")
        _check_float(name, "correct_skipped_power", self.correct_skipped_power, 0.0)
        if self.correct_skipped_power and not self.correct_skipped:
            _fail(name, "correct_skipped_power", self.correct_skipped_power,
                  "0.0 without correct_skipped=True (it weighs the correction that option makes)")
        if self.skip_whole_call and self.forecast_check:
            _fail(name, "forecast_check", True, "False with skip_whole_call=True (no Fn block runs to check the "
                  "forecast against)")
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
        if self.forecast_check:
            s += "_FC"
        if self.skip_whole_call:
            s += "_WC"
        if self.correct_skipped:
            s += "_DC" + (f"{self.correct_skipped_power:g}" if self.correct_skipped_power else "")
        return s


@_named_fields
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
        self.cache_type = "DBPrune"
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        _check_bool(name, "enable_dynamic_prune_threshold", self.enable_dynamic_prune_threshold)
        _check_float(name, "max_dynamic_prune_threshold", self.max_dynamic_prune_threshold, 0.0, allow_none=True)
        _check_float(name, "dynamic_prune_threshold_relax_ratio", self.dynamic_prune_threshold_relax_ratio, 0.0)
        expected = "a list of block indices >= 0"
        ids = _check_int_list(name, "non_prune_block_ids", self.non_prune_block_ids, expected)
        if any(i < 0 for i in ids):
            _fail(name, "non_prune_block_ids", self.non_prune_block_ids, expected)
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


@_named_fields
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
        self.validate()

    def validate(self) -> None:
        """Check every field (type and range); raises ``TypeError`` / ``ValueError`` naming it."""
        _plain_numbers(self)
        name = type(self).__name__
        _check_bool(name, "enable_calibrator", self.enable_calibrator)
        _check_bool(name, "enable_encoder_calibrator", self.enable_encoder_calibrator)
        _check_str(name, "calibrator_cache_type", self.calibrator_cache_type, ("residual", "hidden_states"))


@_named_fields
@dataclass
class TaylorSeerCalibratorConfig(CalibratorConfig):
    """TaylorSeer: a Taylor expansion built from finite differences over the last computed steps."""

    taylorseer_order: int = 1

    def __post_init__(self) -> None:
        self.calibrator_type = "taylorseer"
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        _check_int(type(self).__name__, "taylorseer_order", self.taylorseer_order, 0, 8)

    def strify(self) -> str:
        return f"T1O{self.taylorseer_order}"


@_named_fields
@dataclass
class FoCaCalibratorConfig(CalibratorConfig):
    """FoCa (forecast then calibrate): a Heun-rule forecast anchored at the last computed step,
    using the anchor slope and the local slope (which includes earlier forecasts); no parameters."""

    def __post_init__(self) -> None:
        self.calibrator_type = "foca"
        super().__post_init__()

    def strify(self) -> str:
        return "FoCa"


@_named_fields
@dataclass
class DMDCalibratorConfig(CalibratorConfig):
    """DMD (dynamic mode decomposition, the SVD form of Prony's method): fit a linear
    propagator to the last ``dmd_history`` computed steps and extrapolate by powers of its
    eigenvalues (sums of damped/oscillating exponentials). Needs 4 evenly spaced computed
    steps; before that it is TaylorSeer of order 1.
    ``dmd_rank``: SVD truncation rank (0: keep singular values above 1e-4 of the largest);
    ``dmd_ridge``: added to the singular values before inverting them;
    ``dmd_svd_precision``: "medium" (LAPACK/cuSOLVER default), "low" (randomised
    ``torch.svd_lowrank``, seeded), "high" (the ``gesvd`` driver on CUDA; "medium" elsewhere)."""

    dmd_history: int = 6
    dmd_rank: int = 0
    dmd_ridge: float = 1e-8
    dmd_svd_precision: Literal["low", "medium", "high"] = "medium"

    def __post_init__(self) -> None:
        self.calibrator_type = "dmd"
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        _check_int(name, "dmd_history", self.dmd_history, 1)
        _check_int(name, "dmd_rank", self.dmd_rank, 0)
        _check_float(name, "dmd_ridge", self.dmd_ridge, 0.0)
        _check_str(name, "dmd_svd_precision", self.dmd_svd_precision, ("low", "medium", "high"))

    def strify(self) -> str:
        tag = f"DMDH{self.dmd_history}"
        return tag if self.dmd_svd_precision == "medium" else tag + self.dmd_svd_precision[0]


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
        self.cache_config, self.calibrator_config, self.overrides = cache_config, calibrator_config, overrides
        self.validate()  # validate the overrides now, not at the first forward

    def validate(self) -> None:
        """Check the configs it holds and every override (run through ``DBCacheConfig``'s own
        checks); raises ``TypeError`` / ``ValueError`` naming the field."""
        if self.cache_config is not None and not isinstance(self.cache_config, DBCacheConfig):
            _type_fail("ParamsModifier", "cache_config", self.cache_config, "a DBCacheConfig or DBPruneConfig (or None)")
        if self.calibrator_config is not None and not isinstance(self.calibrator_config, CalibratorConfig):
            _type_fail("ParamsModifier", "calibrator_config", self.calibrator_config,
                       "a TaylorSeerCalibratorConfig, FoCaCalibratorConfig or DMDCalibratorConfig (or None)")
        if not isinstance(self.overrides, dict):
            _type_fail("ParamsModifier", "overrides", self.overrides, "a dict of DBCacheConfig fields")
        unknown = _unknown_fields(DBCacheConfig, list(self.overrides), "ParamsModifier")
        if unknown is not None:
            raise ValueError(unknown)
        if self.cache_config is not None:
            self.cache_config.validate()
        if self.calibrator_config is not None:
            self.calibrator_config.validate()
        try:
            self.apply(DBCacheConfig())
        except (TypeError, ValueError) as e:
            raise type(e)(f"ParamsModifier({', '.join(f'{k}={v!r}' for k, v in self.overrides.items())}): {e}") \
                from None

    def apply(self, base: DBCacheConfig) -> DBCacheConfig:
        return dataclasses.replace(self.cache_config or base, **self.overrides)


@_named_fields
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
        self.validate()

    def validate(self) -> None:
        """Check every field (type and range); raises ``TypeError`` / ``ValueError`` naming it."""
        _plain_numbers(self)
        name = type(self).__name__
        for f in ("ulysses_size", "ring_size", "tp_size"):
            _check_int(name, f, getattr(self, f), 1, allow_none=True)
        _check_str(name, "attention_backend", self.attention_backend, (), allow_none=True)
        if self.cp_plan is not None and not isinstance(self.cp_plan, dict):
            _type_fail(name, "cp_plan", self.cp_plan, "a dict (diffusers' _cp_plan format) or None")
        _check_bool(name, "ulysses_anything", self.ulysses_anything)
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
