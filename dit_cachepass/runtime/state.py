"""Per-loop cache state for one compiled module: buffers, counters and the step record.

One ``LoopState`` per cached loop, keyed by loop name in the session, so a recompiled
graph (new shapes) finds the same state and its shape checks force a full compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..config import DBCacheConfig, CalibratorConfig
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


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


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
    history: list[list[StepRecord]] = field(default_factory=list)  # finished generations
    never_cache: Optional[str] = None  # set when the loop cannot be cached safely

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
        self.records = []
        self.continuous, self.accumulated = 0, 0.0
        self.buffers = {}
        self.calibrator = make_calibrator(self.calibrator_config)
        self.generation += 1

    def reference_for(self, key: Optional[int], x: torch.Tensor, stream_inputs: list[torch.Tensor]
                      ) -> Optional[torch.Tensor]:
        """The stored reference of piece ``key``, only if it and every stored residual still fit
        the current tensors (shape, dtype, device): a stale cache is never applied elsewhere."""
        buf = self.buffers.get(key)
        fits = (
            buf is not None
            and _same_layout(buf.reference, x)
            and len(buf.residuals) == len(stream_inputs)
            and all(_same_layout(r, t) for r, t in zip(buf.residuals, stream_inputs))
        )
        return buf.reference if fits else None

    def _current(self) -> Optional[StepRecord]:
        return self.records[-1] if self.records and self.records[-1].step == self.step else None

    def decide(self, key: Optional[int], reference: Optional[torch.Tensor], ratio: Optional[torch.Tensor]
               ) -> Decision:
        """``ratio``: the 0-d relative L1 diff against ``reference``; read (one host sync)
        only when the rule chain gets that far. ``key`` is None for DBCache's middle, the
        block id for a DBPrune block."""
        if self.never_cache is not None:
            return Decision(False, "unsafe-middle")
        continuous, threshold = self.continuous, None
        if key is not None:  # DBPrune: all blocks of a step see the step's counters
            rec = self._current()
            if rec is None and self.records and not self.records[-1].cached:
                self.continuous = continuous = 0  # a run of pruned steps ended before this step
            continuous -= 1 if rec is not None and rec.cached else 0
            threshold = lambda: self.config.prune_threshold(rec.diffs if rec is not None else [])  # noqa: E731
        d = self.policy.decide(self.step, len(self.cached_steps), continuous, self.accumulated,
                               reference is not None, lambda: self._shared_diff() or float(ratio), threshold)
        if reference is None and key in self.buffers and d.reason == "no-reference":
            d = Decision(False, "shape-change")
        return d

    def _shared_diff(self) -> Optional[float]:
        """With ``cfg_diff_compute_separate=False`` a CFG branch reuses the cond branch's diff."""
        if self.partner is None or self.config.cfg_diff_compute_separate:
            return None
        rec = self.partner.records[-1] if self.partner.records else None
        return rec.diff if rec is not None and rec.step == self.step else None

    def record(self, d: Decision, key: Optional[int] = None) -> None:
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
        self.buffers[key] = Buffer(reference, residuals, values)
