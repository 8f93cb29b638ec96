"""Per-loop cache state for one compiled module: buffers, counters and the step record.

One ``LoopState`` per cached loop, keyed by loop name in the session, so a recompiled
graph (new shapes) finds the same state and its shape checks force a full compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..config import DBCacheConfig, TaylorSeerCalibratorConfig
from .calibrators import Calibrator, make_calibrator
from .policy import DBCachePolicy, Decision


@dataclass
class StepRecord:
    step: int
    cached: bool
    reason: str
    diff: Optional[float]


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


@dataclass
class LoopState:
    name: str
    config: DBCacheConfig
    calibrator_config: Optional[TaylorSeerCalibratorConfig] = None
    partner: Optional["LoopState"] = None  # the cond branch's state, for a CFG branch
    step: int = 0  # the pipeline step of the call in progress (set by the runner)
    generation: int = 0
    fn_reference: Optional[torch.Tensor] = None
    residuals: list[torch.Tensor] = field(default_factory=list)
    values: list[object] = field(default_factory=list)
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
        self.fn_reference, self.residuals, self.values = None, [], []
        self.calibrator = make_calibrator(self.calibrator_config)
        self.generation += 1

    def reference_for(self, fn_out: torch.Tensor, stream_inputs: list[torch.Tensor]) -> Optional[torch.Tensor]:
        """The stored Fn residual, only if it and every stored residual still fit the
        current tensors (shape, dtype, device): a stale cache is never applied elsewhere."""
        ref = self.fn_reference
        fits = (
            ref is not None
            and _same_layout(ref, fn_out)
            and len(self.residuals) == len(stream_inputs)
            and all(_same_layout(r, x) for r, x in zip(self.residuals, stream_inputs))
        )
        return ref if fits else None

    def decide(self, reference: Optional[torch.Tensor], ratio: torch.Tensor) -> Decision:
        """``ratio``: the 0-d relative L1 diff against ``reference``; read (one host sync)
        only when the rule chain gets that far."""
        if self.never_cache is not None:
            return Decision(False, "unsafe-middle")
        d = self.policy.decide(self.step, len(self.cached_steps), self.continuous, self.accumulated,
                               reference is not None, lambda: self._shared_diff() or float(ratio))
        if reference is None and self.fn_reference is not None and d.reason == "no-reference":
            d = Decision(False, "shape-change")
        return d

    def _shared_diff(self) -> Optional[float]:
        """With ``cfg_diff_compute_separate=False`` a CFG branch reuses the cond branch's diff."""
        if self.partner is None or self.config.cfg_diff_compute_separate:
            return None
        rec = self.partner.records[-1] if self.partner.records else None
        return rec.diff if rec is not None and rec.step == self.step else None

    def record(self, d: Decision) -> None:
        self.records.append(StepRecord(self.step, d.cache, d.reason, d.diff))
        if d.diff is not None and d.diff > 0:
            self.accumulated += d.diff
        self.continuous = self.continuous + 1 if d.cache else 0

    def store(self, fn_residual: torch.Tensor, residuals: list[torch.Tensor], values: list[object]) -> None:
        self.fn_reference = fn_residual
        self.residuals = residuals
        self.values = values
