"""Tune a checked forecast (``DBCacheConfig(forecast_check=True)``) on an observed trajectory.

A checked step compares the Fn residual the blocks just produced with the calibrator's
forecast of it; its diff therefore depends on which steps computed before (they feed the
calibrator), so it cannot be read off a table of pairwise diffs as DBCache's can. ``replay``
runs the decision rule chain (``DBCachePolicy``) and the calibrator over the observed steps
instead, and scores the path as ``planner.path_error`` does: the summed relative forecast
error of the middle over the cached steps. ``search`` finds, per calibrator, warmup and
continuous cap, the lowest threshold that caches enough steps for a budget, and keeps the
setting whose replayed path error is lowest. Nothing here runs the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ..config import CalibratorConfig, DBCacheConfig
from ..kernels import rel_l1_diff
from ..runtime.calibrators import make_calibrator
from ..runtime.policy import DBCachePolicy
from ..runtime.state import GUIDE_STREAM, _copy_calibrator
from .planner import Trajectory, _enabled, _streams, forecast_error


def _calibrators() -> tuple[CalibratorConfig, ...]:
    from ..config import DMDCalibratorConfig, TaylorSeerCalibratorConfig

    return (TaylorSeerCalibratorConfig(taylorseer_order=1), TaylorSeerCalibratorConfig(taylorseer_order=2),
            DMDCalibratorConfig())


def replay(traj: Trajectory, config: DBCacheConfig, calibrator: CalibratorConfig,
           memo: Optional[dict] = None) -> tuple[list[int], float]:
    """(cached steps, path error) of ``config`` with ``forecast_check`` and ``calibrator`` on
    the observed trajectory. The diff is the runtime's: sum|measured - forecast| / sum|forecast|.
    ``memo``: forecast errors by (calibrator, computed steps so far, step), shared by the
    replays of one search (a forecast depends on nothing else)."""
    n = len(traj[GUIDE_STREAM])
    streams = _streams(traj)
    policy = DBCachePolicy(config)
    cal = make_calibrator(_enabled(calibrator))
    memo = {} if memo is None else memo
    tag = calibrator.strify()
    history: tuple[int, ...] = ()
    cached: list[int] = []
    continuous, total = 0, 0.0
    for k in range(n):
        def diff(k: int = k) -> float:
            key = (tag, history, k, GUIDE_STREAM)
            if key not in memo:  # on a copy: some forecasters roll their window per forecast
                pred = _copy_calibrator(cal).forecast(GUIDE_STREAM, k, None)
                memo[key] = float(rel_l1_diff(traj[GUIDE_STREAM][k], pred))  # the runtime's own diff
            return memo[key]

        d = policy.decide(k, len(cached), continuous, 0.0, bool(history), diff)
        if d.cache:
            cached.append(k)
            continuous += 1
            key = (tag, history, k, None)
            if key not in memo:
                memo[key] = sum(forecast_error(_copy_calibrator(cal).forecast(s, k, None), traj[s][k])
                                for s in streams)
            total += memo[key]
        else:
            for s in [*streams, GUIDE_STREAM]:
                cal.update(s, traj[s][k], k)
            history, continuous = (*history, k), 0
    return cached, total


@dataclass
class CheckedPlan:
    config: DBCacheConfig
    calibrator: CalibratorConfig
    cached: list[list[int]]  # per trajectory (loop and branch): its cached steps in the replay
    path_error: float


def search(trajs: Union[Trajectory, Sequence[Trajectory]], base: DBCacheConfig, cached_needed: float,
           calibrators: Sequence[CalibratorConfig], warmups: Sequence[int] = (1, 2, 3),
           continuous: Sequence[int] = (1, 2, 3, 4, -1), lo: float = 1e-4, hi: float = 2.0, iterations: int = 14,
           weights: Optional[Sequence[float]] = None) -> Optional[CheckedPlan]:
    """Per calibrator, warmup and cap: the lowest threshold (bisection in log space between
    ``lo`` and ``hi``) whose replay caches at least ``cached_needed`` steps, summed over the
    trajectories (each loop and CFG branch decides on its own; ``weights``: what a cached step
    of each saves, 1 by default); of those, the one with the lowest path error. None when no
    setting caches enough."""
    trajs = [trajs] if isinstance(trajs, dict) else list(trajs)
    weights = [1.0] * len(trajs) if weights is None else list(weights)
    best: Optional[CheckedPlan] = None
    memos: list[dict] = [{} for _ in trajs]
    for cal in calibrators:
        for w in warmups:
            for mc in continuous:
                def run(t: float) -> tuple[DBCacheConfig, list[list[int]], float, float]:
                    cfg = base.update(residual_diff_threshold=t, max_warmup_steps=w, max_continuous_cached_steps=mc,
                                      forecast_check=True, steps_computation_mask=None,
                                      skip_whole_call=False)
                    runs = [replay(tr, cfg, cal, memo) for tr, memo in zip(trajs, memos)]
                    saved = sum(wt * len(c) for wt, (c, _) in zip(weights, runs))
                    return cfg, [c for c, _ in runs], sum(e for _, e in runs), saved

                top = run(hi)
                if top[3] < cached_needed - 1e-9:
                    continue
                a, b, found = math.log(lo), math.log(hi), top
                for _ in range(iterations):  # more threshold never caches less (nearly true)
                    mid = run(math.exp((a + b) / 2))
                    if mid[3] >= cached_needed - 1e-9:
                        b, found = (a + b) / 2, mid
                    else:
                        a = (a + b) / 2
                cfg, cached, err, _ = found
                if best is None or err < best.path_error:
                    best = CheckedPlan(cfg, cal, cached, err)
    return best
