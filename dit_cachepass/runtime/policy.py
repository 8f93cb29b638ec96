"""The DBCache decision: cache-dit 1.5.3's ``can_cache`` rule chain, first match wins.

A policy only reads state and returns a ``Decision``; it never touches tensors beyond the
one diff it is handed, so every rule is testable on plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from ..config import DBCacheConfig


@dataclass(frozen=True)
class Decision:
    cache: bool
    reason: str
    diff: Optional[float] = None


class DBCachePolicy:
    """Rules, in order: warmup, steps mask, max cached, max continuous, accumulated diff,
    threshold <= 0, no reference yet, then ``diff < threshold`` (strict, as cache-dit).
    Caching always reads the diff first: a NaN/inf diff computes at any threshold, also where
    cache-dit caches without looking (threshold >= 1, static mask)."""

    def __init__(self, config: DBCacheConfig):
        self.config = config
        mask = config.steps_computation_mask
        warmup = config.max_warmup_steps
        if mask is not None:
            leading = next((i for i, v in enumerate(mask) if v != 1), len(mask))
            warmup = min(warmup, leading)
        self.warmup_steps = set(range(0, warmup, config.warmup_interval))

    def decide(self, step: int, n_cached: int, continuous: int, accumulated: float,
               has_reference: bool, diff_fn: Callable[[], float],
               threshold: Optional[Callable[[], float]] = None) -> Decision:
        c = self.config
        if step in self.warmup_steps:
            return Decision(False, "warmup")
        if c.skip_whole_call:  # the call itself was planned to compute (runtime/wholecall.py)
            return Decision(False, "whole-call")
        if c.steps_computation_mask is not None:
            mask = c.steps_computation_mask
            if step < len(mask) and mask[step] == 1:
                return Decision(False, "mask")
            if c.steps_computation_policy == "static":
                if not has_reference:
                    return Decision(False, "no-reference")
                return self._finite(diff_fn(), True, "mask-static")
        if c.max_cached_steps >= 0 and n_cached >= c.max_cached_steps:
            return Decision(False, "max_cached_steps")
        if c.max_continuous_cached_steps >= 0 and continuous >= c.max_continuous_cached_steps:
            return Decision(False, "max_continuous_cached_steps")
        acc = c.max_accumulated_residual_diff_threshold
        if acc is not None and acc > 0 and accumulated >= acc:
            return Decision(False, "max_accumulated_residual_diff_threshold")
        t = c.threshold if threshold is None else threshold()
        if t <= 0:
            return Decision(False, "threshold<=0")
        if not has_reference:
            return Decision(False, "no-reference")
        diff = diff_fn()
        if t >= 1.0:
            return self._finite(diff, True, "threshold>=1")
        return self._finite(diff, diff < t, "diff<threshold" if diff < t else "diff>=threshold")

    @staticmethod
    def _finite(diff: float, cache: bool, reason: str) -> Decision:
        if not math.isfinite(diff):
            return Decision(False, "non-finite-diff", diff)
        return Decision(cache, reason, diff)
