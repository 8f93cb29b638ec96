"""Replay DBCache's rule chain on measured diffs: the simulated cached steps of a config, and
the config (threshold, warmup, continuous cap) that reaches a target speedup.

A simulated cached step ``k`` compares its residual with the one of the last *simulated*
computed step ``j``: ``D[j, k]`` of the pairwise diff matrix ``observe`` measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import DBCacheConfig
from ..runtime.policy import DBCachePolicy


def pairwise_from_consecutive(diffs: Sequence[Optional[float]]) -> np.ndarray:
    """``D[j, k] ~ d_{j+1} + ... + d_k`` from consecutive diffs (``diffs[k]`` = diff of step k vs
    step k-1; ``diffs[0]`` is ignored). An upper bound of the real pairwise diff (triangle
    inequality, up to the normalisation), used when the residuals were not kept."""
    d = np.array([np.nan if v is None else float(v) for v in diffs], dtype=np.float64)
    n = len(d)
    out = np.full((n, n), np.nan)
    for j in range(n):
        acc = 0.0
        for k in range(j + 1, n):
            acc += d[k]
            out[j, k] = acc
    return out


@dataclass
class Simulation:
    """One loop/branch replayed under a config: cached steps and the diff each step read."""

    cached: list[int]
    diffs: dict[int, float]  # step -> simulated diff (vs the simulated last computed step)
    reasons: dict[int, str]
    steps: int

    @property
    def computed(self) -> int:
        return self.steps - len(self.cached)


def simulate(pairwise: np.ndarray, config: DBCacheConfig) -> Simulation:
    """Replay the runtime's rule chain (``DBCachePolicy``, first match wins) on pairwise diffs
    ``pairwise[j, k]`` (diff of step k's Fn residual against step j's). Step 0 has no
    reference; a cached step keeps the reference of the last computed step."""
    policy = DBCachePolicy(config)
    n = pairwise.shape[0]
    last: Optional[int] = None
    cached: list[int] = []
    diffs: dict[int, float] = {}
    reasons: dict[int, str] = {}
    continuous, accumulated = 0, 0.0
    for k in range(n):
        j = last
        d = policy.decide(k, len(cached), continuous, accumulated, j is not None,
                          lambda: float(pairwise[j, k]))
        reasons[k] = d.reason
        if d.diff is not None:
            diffs[k] = d.diff
            if d.diff > 0:
                accumulated += d.diff
        if d.cache:
            cached.append(k)
            continuous += 1
        else:
            last, continuous = k, 0
    return Simulation(cached, diffs, reasons, n)


@dataclass
class _Stream:
    """One cached loop and branch of the observed generation."""

    name: str
    pairwise: np.ndarray
    consecutive: list[Optional[float]]
    weight: float  # work skipped per cached step (1, or the middle's FLOPs)


@dataclass
class Proposal:
    config: DBCacheConfig
    sims: list[Simulation]
    speedup: float
    reached: bool


def _speedup(streams: Sequence[_Stream], sims: Sequence[Simulation], full: float) -> float:
    executed = full - sum(s.weight * len(sim.cached) for s, sim in zip(streams, sims))
    return full / executed if executed > 0 else math.inf


def propose(streams: Sequence[_Stream], base: DBCacheConfig, target: float, full: float, *,
            warmups: Optional[Sequence[int]] = None, continuous: Sequence[int] = (1, 2, 3, 4, -1),
            margin: float = 0.02) -> Proposal:
    """The lowest threshold (over every warmup in ``warmups`` and cap in ``continuous``) whose
    simulated speedup reaches ``target``; ties go to the longer warmup, then the smaller cap.
    ``full``: the work of the uncached generation in the units of the streams' weights. When
    nothing reaches the target, the proposal with the highest simulated speedup (reached=False)."""
    n = max(s.pairwise.shape[0] for s in streams)
    warmups = list(warmups) if warmups is not None else list(range(1, max(2, n)))
    values = np.unique(np.concatenate([s.pairwise[np.isfinite(s.pairwise) & (s.pairwise > 0)] for s in streams]
                                      + [np.zeros(0)]))
    thresholds = [float(v) * (1.0 + margin) for v in values] or [1.0]

    def run(cfg: DBCacheConfig) -> tuple[list[Simulation], float]:
        sims = [simulate(s.pairwise, cfg) for s in streams]
        return sims, _speedup(streams, sims, full)

    best: Optional[tuple] = None  # (key, Proposal)
    fallback: Optional[Proposal] = None
    for w in warmups:
        for mc in continuous:
            cfg_of = lambda t: base.update(residual_diff_threshold=t, max_warmup_steps=w,  # noqa: E731
                                            max_continuous_cached_steps=mc)
            sims, sp = run(cfg_of(thresholds[-1]))
            if fallback is None or sp > fallback.speedup + 1e-12:
                fallback = Proposal(cfg_of(thresholds[-1]), sims, sp, False)
            if sp < target - 1e-9:
                continue
            lo, hi = 0, len(thresholds) - 1  # thresholds[hi] reaches the target
            found = (sims, sp)
            while lo < hi:  # bisection, assuming more threshold never caches less (nearly true)
                mid = (lo + hi) // 2
                sims_m, sp_m = run(cfg_of(thresholds[mid]))
                if sp_m >= target - 1e-9:
                    hi, found = mid, (sims_m, sp_m)
                else:
                    lo = mid + 1
            t = thresholds[hi]
            key = (t, -w, mc if mc >= 0 else math.inf)
            if best is None or key < best[0]:
                best = (key, Proposal(cfg_of(t), found[0], found[1], True))
    if best is not None:
        return best[1]
    assert fallback is not None
    return fallback


def _next_threshold(streams: Sequence[_Stream], prop: Proposal, full: float, missed: Sequence[float],
                    margin: float) -> Optional[float]:
    """The smallest threshold above the current one that accepts a diff that made a predicted
    cached step compute in the verify run (``missed``), or else that the simulation expects to
    cache more with. None when no larger threshold changes anything."""
    t = prop.config.residual_diff_threshold
    values = {float(v) * (1 + margin) for st in streams for v in st.pairwise[np.isfinite(st.pairwise)] if v > 0}
    values |= {float(m) * (1 + max(margin, 1e-6)) for m in missed}
    if missed:
        need = min(missed)
        return min((v for v in values if v > need and v > t * (1 + 1e-9)), default=None)
    for v in sorted(v for v in values if v > t * (1 + 1e-9)):
        cfg = prop.config.update(residual_diff_threshold=v)
        if _speedup(streams, [simulate(st.pairwise, cfg) for st in streams], full) > prop.speedup + 1e-9:
            return v
    return None
