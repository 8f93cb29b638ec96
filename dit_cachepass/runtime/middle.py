"""One skippable middle on one call: decide, then rebuild its outputs from the cache or
store what the computed middle produced. Both paths use it: the graph path (``Runner``,
a middle piece) and the block path (``BlockRunner``, the middle blocks of a list)."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Optional

import torch

from ..config import CalibratorConfig, DBCacheConfig
from ..kernels import apply_residuals, backend_for, fused_residual_diff, rel_l1_diff
from .state import GUIDE_STREAM

if TYPE_CHECKING:
    from .session import Session
    from .state import Buffer


def _global_ratio(cur: torch.Tensor, ref: Optional[torch.Tensor], group: Any
                  ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """sum|cur - ref| / sum|ref| over all ranks' shards, and whether every rank has a usable
    reference. One all-reduce per decision, made by every rank on every call, so the ranks
    always take the same branch (a local decision would diverge and hang the next collective)."""
    import torch.distributed as dist

    stats = torch.zeros(3, dtype=torch.float64, device=cur.device)
    if ref is None:
        stats[2] = 1.0
    else:
        stats[0] = (cur.double() - ref.double()).abs().sum()
        stats[1] = ref.double().abs().sum()
    dist.all_reduce(stats, group=group)
    if stats[2] > 0:
        return None, torch.tensor(float("inf"))
    ratio = stats[0] / stats[1] if stats[1] > 0 else torch.tensor(float("inf"))
    return ref, ratio.float()


def _folded_diff(measured: torch.Tensor, ref: torch.Tensor, buf: "Buffer",
                 fed: Optional[torch.Tensor] = None, num_t: Optional[torch.Tensor] = None) -> float:
    """sum|measured - ref| / sum|ref| as a float. A folded computed step stored sum|ref| and a
    poison (0, or NaN when its residuals were not finite) in ``buf.den``, read here as host floats:
    the diff is NaN and the step computes when anything was not finite. Called only when the rule
    chain reads the diff. The numerator comes from the Fn piece when the reference fed to it
    (``fed``) is this state's (``num_t``); else one Triton launch on a GPU, one op on CPU (same
    policy as the reference implementation: +inf when sum|ref| is 0, NaN when anything is not
    finite)."""
    if buf.den is None:  # stored by an unfolded call (another graph of the same loop)
        return float(rel_l1_diff(measured, ref))
    if fed is ref and num_t is not None:
        if num_t.is_cuda:  # one device-to-host copy (one sync) instead of three
            num, d, poison = torch.stack((num_t, *buf.den)).tolist()
            d += poison
        else:
            num, d = float(num_t), buf.denominator()
    elif measured.is_cuda and backend_for(measured) == "triton":
        return float(rel_l1_diff(measured, ref)) + float(buf.den[1])
    else:
        if measured.dtype in (torch.float16, torch.bfloat16):  # subtract and sum in fp32, as the kernel does
            measured, ref = measured.float(), ref.float()
        num, d = float(torch.dist(measured, ref, 1)), buf.denominator()
    if not (math.isfinite(num) and math.isfinite(d)):
        return math.nan
    return num / d if d > 0 else math.inf


def _checked_diff(measured: torch.Tensor, forecast: torch.Tensor, buf: "Buffer") -> float:
    """``forecast_check`` on a folded step: sum|measured - forecast| / sum|forecast|, NaN when the
    stored step was not finite (its poison), so that step computes."""
    poison = float(buf.den[1]) if buf.den is not None else 0.0
    return float(rel_l1_diff(measured, forecast)) + poison


class MiddleCall:
    """``key`` is None for DBCache's whole middle (decided on the Fn residual ``x - x0``) and
    the block id for a DBPrune block (decided on its input ``x``). ``ins`` are the streams
    entering the middle; ``hidden`` the index of the hidden stream among them. ``folded``: when
    the Fn piece computed them (``fold``), the Fn residual, its fp32 L1 sum, the reference the
    Fn piece was given and sum|residual - that reference|."""

    def __init__(self, session: "Session", name: str, config: DBCacheConfig,
                 calibrator_config: Optional[CalibratorConfig], key: Optional[int], never_cache: Optional[str],
                 hidden: Optional[int], x: torch.Tensor, x0: Optional[torch.Tensor], ins: list[torch.Tensor],
                 folded: Optional[tuple[torch.Tensor, ...]] = None):
        session.place()  # (the call's branch and step)
        self.state = state = session.state(name, session.branch, config, calibrator_config)
        if folded is not None:
            session.note_state(name, session.branch)
        state.step = session.step
        state.never_cache = never_cache
        self.key, self.ins = key, ins
        # CUDA graphs: a piece's outputs live in the graph pool and the next replay overwrites
        # them, so whatever the state keeps of them is copied out first
        self.own = session.compile_options.cudagraphs
        reference = state.reference_for(key, x, ins)
        # a checked forecast compares the Fn residual with its forecast, not the stored one
        self.check = key is None and config.forecast_check and state.calibrator is not None
        if self.check and reference is not None:
            reference = state.forecast_reference(reference)
        group = session.process_group
        # a piece output (DBPrune's block input, a folded Fn residual) may live in a CUDA graph pool
        self.is_output = key is not None or folded is not None
        self.measured_sum: Optional[torch.Tensor] = None
        if group is not None:  # sharded activations: every rank must take the same decision
            self.measured = folded[0] if folded is not None else x - x0 if key is None else x
            reference, ratio = _global_ratio(self.measured, reference, group)
        elif folded is not None:
            self.measured, self.measured_sum, fed, num = folded
            if self.check:  # the folded numerator was taken against the stored reference, not the forecast
                ratio = functools.partial(_checked_diff, self.measured, reference, state.buffers[key]) \
                    if reference is not None else None
            else:
                ratio = (functools.partial(_folded_diff, self.measured, reference, state.buffers[key], fed, num)
                         if reference is not None else None)
        elif key is None:  # one pass: Fn residual (x - loop input) and its diff vs the reference
            self.measured, ratio = fused_residual_diff(x, x0, reference)
        else:
            self.measured, ratio = x, rel_l1_diff(x, reference) if reference is not None else None
        self.decision = state.decide(key, reference, ratio)
        cal = state.calibrator
        self.calibrated = [cal is not None and cal.calibrates(k, hidden) for k in range(len(ins))]

    @property
    def cache(self) -> bool:
        return self.decision.cache

    def cached(self) -> tuple[list[torch.Tensor], list[Any]]:
        """The middle's stream outputs (input + stored residual, or the calibrator's forecast)
        and its stored non-tensor outputs."""
        state, ins, cal = self.state, self.ins, self.state.calibrator
        buf = state.buffers[self.key]
        outs: list[Any] = [None] * len(ins)
        plain = [k for k in range(len(ins)) if not self.calibrated[k]]
        for j in range(0, len(plain), 2):  # two streams per fused launch
            ks = plain[j:j + 2]
            res = apply_residuals(*[t for k in ks for t in (ins[k], buf.residuals[k])])
            for k, v in zip(ks, res):
                outs[k] = v
        for k in range(len(ins)):
            if self.calibrated[k]:
                outs[k] = cal.forecast(k, state.step, ins[k] if cal.cache_type == "residual" else None)
        state.record(self.decision, self.key)
        return outs, list(buf.values)

    def computed(self, outs: list[torch.Tensor], values: list[Any],
                 folded: Optional[tuple[list[torch.Tensor], torch.Tensor]] = None) -> None:
        """Store what the computed middle produced (its residuals and non-tensor outputs).
        ``folded``: the residuals and their finiteness poison, when the middle piece computed them."""
        state, cal = self.state, self.state.calibrator
        if folded is None:
            residuals = [o - t for o, t in zip(outs, self.ins)]  # new tensors, outside any graph pool
        else:
            residuals = [r.clone() for r in folded[0]] if self.own else folded[0]
        reference = self.measured.clone() if self.own and self.is_output else self.measured
        if folded is not None and self.measured_sum is not None:  # no sync: the next diff reads the poison
            den = (self.measured_sum, folded[1])
            state.keep(self.key, reference, residuals, values, tuple(t.clone() for t in den) if self.own else den)
        else:
            state.store(self.key, reference, residuals, values)
        for k in range(len(outs)):
            if self.calibrated[k]:
                hidden = outs[k].clone() if self.own else outs[k]
                cal.update(k, residuals[k] if cal.cache_type == "residual" else hidden, state.step)
        if self.check:  # the forecaster follows the Fn residual at the computed steps, as the middle's
            cal.update(GUIDE_STREAM, reference, state.step)
        state.record(self.decision, self.key)
