"""Per-loop cache state for one compiled module: buffers, counters and the step record.

One ``LoopState`` per cached loop, keyed by loop name in the session, so a recompiled
graph (new shapes) finds the same state and its shape checks force a full compute.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from ..config import DBCacheConfig, CalibratorConfig
from .calibrator_base import same_layout
from .calibrators import Calibrator, make_calibrator
from .policy import DBCachePolicy, Decision


@dataclass
class StepRecord:
    step: int
    cached: bool  # DBCache: the middle was skipped; DBPrune: at least one block was pruned
    reason: str
    diff: Optional[float]  # DBPrune: the first block's diff
    skipped: list = field(default_factory=list)  # skipped middle pieces: [None] (DBCache) or block ids
    diffs: list = field(default_factory=list)  # DBPrune: every evaluated block's diff, in order


@dataclass
class Buffer:
    """What one skippable piece needs: its decision reference and the residuals it adds."""

    reference: torch.Tensor
    residuals: list[torch.Tensor]
    values: list[object]
    # folded steps: (sum|reference| in fp32, poison: 0 or NaN when a residual was not finite); read
    # with the next diff, so the computed step itself has no host sync
    den: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def denominator(self) -> float:
        """sum|reference| + poison as a host float (a folded step's; non-finite when the step was)."""
        return float(self.den[0]) + float(self.den[1])


#: the calibrator stream that follows the Fn residual (``forecast_check``); middle streams are >= 0
GUIDE_STREAM = -1


@dataclass
class LoopState:
    name: str
    config: DBCacheConfig
    calibrator_config: Optional[CalibratorConfig] = None
    partner: Optional["LoopState"] = None  # the cond branch's state, for a CFG branch
    step: int = 0  # the pipeline step of the call in progress (set by the runner)
    generation: int = 0
    buffers: dict = field(default_factory=dict)  # None (DBCache middle) or block id -> Buffer
    continuous: int = 0
    accumulated: float = 0.0
    records: list[StepRecord] = field(default_factory=list)
    history: list[list[StepRecord]] = field(default_factory=list)  # the last finished generations
    never_cache: Optional[str] = None  # set when the loop cannot be cached safely
    finished: int = 0  # finished generations with at least one record (history keeps MAX_HISTORY)
    warn: Optional[Callable[..., None]] = None  # the session's warn_once(msg, key)
    restarted: bool = False  # an input changed layout: the next decision reports a shape change
    # skipped whole calls since the last computed one: (step, forecast tensors, anchor step, anchor
    # tensors), for ``correct_skipped`` (runtime/wholecall.py)
    pending: list = field(default_factory=list)

    MAX_HISTORY = 4

    def __post_init__(self) -> None:
        self.policy = DBCachePolicy(self.config)
        self.calibrator: Optional[Calibrator] = make_calibrator(self.calibrator_config)

    @property
    def cached_steps(self) -> list[int]:
        return [r.step for r in self.records if r.cached]

    def new_generation(self) -> None:
        """Forget every buffer and counter (cache-dit keeps some; see docs/differences.md)."""
        if self.records:
            self.history.append(self.records)
            del self.history[:-self.MAX_HISTORY]
            self.finished += 1
        self.records = []
        self._forget()
        self.generation += 1

    def restart(self) -> None:
        """Forget what was stored (buffers, counters, calibrator) but keep this generation's
        record: the next decision finds no reference and computes."""
        self._forget()
        self.restarted = True

    def _forget(self) -> None:
        self.continuous, self.accumulated = 0, 0.0
        self.buffers, self.pending = {}, []
        self.calibrator = make_calibrator(self.calibrator_config)

    def reference_for(self, key: Optional[int], x: torch.Tensor, stream_inputs: list[torch.Tensor]
                      ) -> Optional[torch.Tensor]:
        """The stored reference of piece ``key``, only if it and every stored residual still fit
        the current tensors (shape, dtype, device): a stale cache is never applied elsewhere."""
        buf = self.buffers.get(key)
        fits = (
            buf is not None
            and same_layout(buf.reference, x)
            and len(buf.residuals) == len(stream_inputs)
            and all(same_layout(r, t) for r, t in zip(buf.residuals, stream_inputs))
        )
        return buf.reference if fits else None

    def forecast_reference(self, reference: torch.Tensor) -> Optional[torch.Tensor]:
        """``forecast_check``: the calibrator's forecast of the Fn residual at this step, in place
        of the stored ``reference`` (same layout, or None: compute). Forecast on a copy, since
        some forecasters (FoCa) roll their window forward on every forecast."""
        cal = self.calibrator
        if cal is None:
            return reference
        try:
            pred = _copy_calibrator(cal).forecast(GUIDE_STREAM, self.step, None)
        except KeyError:  # no computed step since the stream (re)started
            return None
        return pred if same_layout(pred, reference) else None

    def _current(self) -> Optional[StepRecord]:
        return self.records[-1] if self.records and self.records[-1].step == self.step else None

    def decide(self, key: Optional[int], reference: Optional[torch.Tensor],
               ratio: Union[None, torch.Tensor, Callable[[], float]]) -> Decision:
        """``ratio``: the 0-d relative L1 diff against ``reference`` (or a function computing
        it); read (one host sync) only when the rule chain gets that far. ``key`` is None for
        DBCache's middle, the block id for a DBPrune block."""
        if self.never_cache is not None:
            return Decision(False, "unsafe-middle")
        continuous, threshold = self.continuous, None
        if key is not None:  # DBPrune: all blocks of a step see the step's counters
            rec = self._current()
            if rec is None and self.records and not self.records[-1].cached:
                self.continuous = continuous = 0  # a run of pruned steps ended before this step
            continuous -= 1 if rec is not None and rec.cached else 0
            threshold = lambda: self.config.prune_threshold(rec.diffs if rec is not None else [])  # noqa: E731
        n_cached = len(self.cached_steps) if self.config.max_cached_steps >= 0 else 0  # O(steps): only when capped
        read = ratio if callable(ratio) else lambda: float(ratio)
        d = self.policy.decide(self.step, n_cached, continuous, self.accumulated,
                               reference is not None, lambda: self._shared_diff() or read(), threshold)
        if reference is None and (key in self.buffers or self.restarted) and d.reason == "no-reference":
            d = Decision(False, "shape-change")
        elif d.reason == "non-finite-diff" and self._poisoned(key):
            d = Decision(False, "no-reference")  # as if ``store`` had refused the step's values
        return d

    def _poisoned(self, key: Optional[int]) -> bool:
        """Did the step that stored this buffer produce non-finite values? Then drop it, as
        ``store`` does for unfolded steps (one sync, only after a non-finite diff)."""
        buf = self.buffers.get(key)
        if buf is None or buf.den is None or math.isfinite(buf.denominator()):
            return False
        self.buffers.pop(key)
        self._warn_non_finite()
        return True

    def _warn_non_finite(self) -> None:
        if self.warn is not None:
            self.warn(f"loop {self.name}: a computed step produced non-finite values (NaN/inf); its "
                      "residuals are not kept, so no later step reuses them", "non-finite")

    def _shared_diff(self) -> Optional[float]:
        """With ``cfg_diff_compute_separate=False`` a CFG branch reuses the cond branch's diff."""
        if self.partner is None or self.config.cfg_diff_compute_separate:
            return None
        rec = self.partner.records[-1] if self.partner.records else None
        return rec.diff if rec is not None and rec.step == self.step else None

    def record(self, d: Decision, key: Optional[int] = None) -> None:
        self.restarted = False
        if key is None:  # DBCache: one decision per call
            self.records.append(StepRecord(self.step, d.cache, d.reason, d.diff, [None] if d.cache else []))
            self.continuous = self.continuous + 1 if d.cache else 0
        else:  # DBPrune: one record per call, updated by each block's decision
            rec = self._current()
            if rec is None:
                rec = StepRecord(self.step, False, d.reason, d.diff)
                self.records.append(rec)
            if d.diff is not None:
                rec.diffs.append(d.diff)
            if d.cache:
                if not rec.cached:
                    rec.cached, rec.reason = True, d.reason
                    self.continuous += 1
                rec.skipped.append(key)
        if d.diff is not None and d.diff > 0:
            self.accumulated += d.diff

    def store(self, key: Optional[int], reference: torch.Tensor, residuals: list[torch.Tensor],
              values: list[object]) -> None:
        """Keep a computed step's reference and residuals, unless any is non-finite: a NaN kept
        here would make later clean steps return NaN. Then the piece has no reference and its
        next call computes (one host sync per computed step)."""
        tensors = [reference, *residuals]
        # one fused L1 norm per tensor (fp32 accumulation: no fp16 overflow), one check, one sync
        acc = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        finite = torch.stack(torch._foreach_norm(tensors, 1, dtype=acc)).isfinite().all()
        if not bool(finite):
            self.buffers.pop(key, None)
            self._warn_non_finite()
            return
        self.buffers[key] = Buffer(reference, residuals, values)

    def keep(self, key: Optional[int], reference: torch.Tensor, residuals: list[torch.Tensor],
             values: list[object], den: tuple[torch.Tensor, torch.Tensor]) -> None:
        """``store`` for a folded step: ``den`` (sum|reference| and the residuals' poison) is
        checked by the next diff instead of now."""
        self.buffers[key] = Buffer(reference, residuals, values, den)

    # -- snapshot / restore (a call that raises leaves the state as before it) ------------
    def snapshot(self) -> tuple:
        """O(1) in the generation's length: ``records`` only grows during a call (a new
        generation starts a new list), so the list and its length restore it; DBPrune updates
        the last record in place, so that one is copied."""
        r = self.records[-1] if self.records else None
        last = StepRecord(r.step, r.cached, r.reason, r.diff, list(r.skipped), list(r.diffs)) if r else None
        return (self.step, self.generation, self.finished, dict(self.buffers), self.continuous, self.accumulated,
                self.records, len(self.records), last, list(self.history), _copy_calibrator(self.calibrator),
                self.never_cache, list(self.pending))

    def restore(self, snap: tuple) -> None:
        (self.step, self.generation, self.finished, self.buffers, self.continuous, self.accumulated,
         self.records, n, last, self.history, self.calibrator, self.never_cache, self.pending) = snap
        del self.records[n:]
        if last is not None:
            self.records[-1] = last


def _copy_calibrator(cal: Optional[Calibrator]) -> Optional[Calibrator]:
    """A copy whose per-stream containers are new (the tensors are never updated in place)."""
    if cal is None:
        return None
    new = copy.copy(cal)
    for k, v in vars(cal).items():
        if isinstance(v, dict):
            setattr(new, k, {s: list(x) if isinstance(x, list) else x for s, x in v.items()})
    return new
