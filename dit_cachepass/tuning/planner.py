"""Planned caching: choose the steps to compute, for a budget, from one observed generation.

An observing run (every step computes; ``TrajectoryRecorder`` as its forward hook) keeps, per
cached loop, the Fn residual and the middle's residuals of every step. ``plan_steps`` then
finds, for a budget of computed steps, the ``steps_computation_mask`` whose summed forecast
error over the WHOLE path, replayed through the very calibrator that will fill the skipped
steps, is lowest: a local search over masks from evenly spread starts. The replay is exact on
the observed trajectory and approximate once cached steps make the real one drift. On the
shipped digits DiT this proxy correlates at 0.97 with the output PSNR of real runs
(docs/frontier.md). Nothing here runs the model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.utils._pytree as pytree

from ..config import CalibratorConfig
from ..runtime.calibrators import make_calibrator
from ..runtime.session import state_label
from ..runtime.state import GUIDE_STREAM
from ..runtime.wholecall import WHOLE_CALL

Trajectory = dict  # stream -> list of tensors, one per step (GUIDE_STREAM: the Fn residual)


def _streams(traj: Trajectory) -> list[int]:
    return sorted(s for s in traj if s != GUIDE_STREAM)


def _enabled(config: CalibratorConfig) -> CalibratorConfig:
    return dataclasses.replace(config, enable_calibrator=True, enable_encoder_calibrator=True)


def forecast_error(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Relative L1 error of a forecast of one stream at one step: the unit of a path error."""
    return float((pred - truth).abs().sum() / truth.abs().sum().clamp_min(1e-30))


def _steps(traj) -> int:
    return len((traj[0] if isinstance(traj, (list, tuple)) else traj)[GUIDE_STREAM])


def path_error(traj: Union[Trajectory, Sequence[Trajectory]], mask: Sequence[int],
               calibrator: Optional[CalibratorConfig]) -> float:
    """Summed relative L1 forecast error of the middle streams over the cached steps of ``mask``
    (1 = compute), replaying ``calibrator`` (None: reuse the last computed residual) on the
    observed trajectory (or on each of several: the loops and CFG branches one mask serves).
    Step 0 always computes."""
    if isinstance(traj, (list, tuple)):
        return sum(path_error(t, mask, calibrator) for t in traj)
    n = len(traj[GUIDE_STREAM])
    streams = _streams(traj)
    cal = make_calibrator(_enabled(calibrator)) if calibrator is not None else None
    last: dict[int, torch.Tensor] = {}
    total = 0.0
    for k in range(n):
        if k == 0 or mask[k]:
            for s in [*streams, GUIDE_STREAM]:
                if cal is not None:
                    cal.update(s, traj[s][k], k)
                last[s] = traj[s][k]
            continue
        for s in streams:
            pred = last[s] if cal is None else cal.forecast(s, k, None)
            truth = traj[s][k]
            total += forecast_error(pred, truth)
    return total


def _spread(n: int, computed: int, head: int) -> list[int]:
    """``computed`` steps: the first ``head`` and the rest at the centres of equal spans of the
    remaining steps."""
    head = min(max(1, head), computed)
    rest = computed - head
    mask = [1 if k < head else 0 for k in range(n)]
    for i in range(rest):
        mask[min(n - 1, head + int((i + 0.5) * (n - head) / rest))] = 1
    while sum(mask) < computed:  # rounding collisions
        mask[mask.index(0)] = 1
    return mask


def plan_steps(traj: Union[Trajectory, Sequence[Trajectory]], computed: int, calibrator: Optional[CalibratorConfig],
               heads: Sequence[int] = (1, 2, 3), moves: Sequence[int] = (-2, -1, 1, 2),
               max_rounds: int = 50) -> tuple[list[int], float]:
    """The mask with ``computed`` computed steps (step 0 always) whose ``path_error`` is lowest,
    found by first-improvement local search (move one computed step by ``moves``) from evenly
    spread starts with ``heads`` leading computed steps. Returns (mask, its path error)."""
    n = _steps(traj)
    if not 1 <= computed <= n:
        raise ValueError(f"computed={computed} must be in [1, {n}] (the observed steps)")
    best_mask, best = None, math.inf
    for head in heads:
        mask = _spread(n, computed, head)
        err = path_error(traj, mask, calibrator)
        for _ in range(max_rounds):
            improved = False
            for i in [k for k in range(1, n) if mask[k]]:
                for d in moves:
                    j = i + d
                    if not 0 < j < n or mask[j]:
                        continue
                    trial = list(mask)
                    trial[i], trial[j] = 0, 1
                    e = path_error(traj, trial, calibrator)
                    if e < err - 1e-12:
                        mask, err, improved = trial, e, True
                        break
            if not improved:
                break
        if err < best:
            best_mask, best = mask, err
    assert best_mask is not None
    return best_mask, best


class Refined(NamedTuple):
    """What ``refine`` found: the mask, the filler of its skipped steps (one of ``fillers``), the
    real error of that pair and how many real runs it took."""

    mask: list[int]
    filler: Any
    error: float
    evals: int


def refine(starts: Sequence[Sequence[int]], fillers: Sequence[Any], error: Callable[[list[int], Any], float],
           moves: Sequence[int] = (-2, -1, 1, 2), max_evals: int = 64,
           screen: Optional[Sequence[int]] = None) -> Refined:
    """Refine planned masks on real runs: ``error(mask, filler)`` runs the cached generation and
    returns its output error against the uncached one (the caller's calibration inputs). A
    filler is whatever fills the skipped steps, passed to ``error`` as is: a calibrator config,
    or e.g. (calibrator config, correction fields) as ``whole_call_fillers`` gives.

    Why: the path error replays forecasts on the observed trajectory, where every skipped step's
    error stays; in a real run a computed step after a skip sees the drifted input and partly
    corrects it, so errors cancel in ways the replay cannot see (on the digits model the real
    error of a 14/28 plan is 2.8x smaller than the sum of its steps' errors measured alone). So
    the real error decides: every (start, filler) pair is scored, then from the best one each
    computed step is moved by ``moves`` (first improvement, the filler fixed), until no move
    helps or ``max_evals`` runs are spent; the fillers are scored once more on the final mask.
    Step 0 stays computed and the number of computed steps never changes. ``screen``: score the
    starts with only these fillers (indices), for many starts (``neighbour_starts``).

    The search is local, and the planner's starts can sit in a poor basin: on the digits model
    the 11/28 plan converged at 45.8 dB from them and reached 48.6 from a start made of the
    refined 10/28 plan plus one step."""
    if not starts or not fillers:
        raise ValueError("refine needs at least one start mask and one filler")
    if max_evals < 1:
        raise ValueError(f"max_evals={max_evals} is invalid: expected at least 1 real run")
    seen: dict[tuple, float] = {}

    def score(mask: Sequence[int], filler: int) -> float:
        key = (tuple(mask), filler)
        if key not in seen:
            if len(seen) >= max_evals:
                return math.inf
            e = float(error(list(mask), fillers[filler]))
            seen[key] = e if math.isfinite(e) else math.inf
        return seen[key]

    pairs = [(list(m), f) for m in {tuple(m): None for m in starts}
             for f in (range(len(fillers)) if screen is None else screen)]
    mask, filler = min(pairs, key=lambda p: score(*p))
    best, n = score(mask, filler), len(mask)
    since = 0  # computed steps tried since the last improvement: a full pass without one ends it
    i = 0
    while since < sum(mask) - 1 and len(seen) < max_evals:
        i = next(k for k in [*range(i + 1, n), *range(1, i + 1)] if mask[k])
        since += 1
        for j in (i + d for d in moves):
            if 0 < j < n and not mask[j]:
                trial = list(mask)
                trial[i], trial[j] = 0, 1
                if score(trial, filler) < best:
                    mask, best, since, i = trial, score(trial, filler), 0, j
                    break
    filler = min(range(len(fillers)), key=lambda f: score(mask, f))
    return Refined(mask, fillers[filler], score(mask, filler), len(seen))


def neighbour_starts(masks: Sequence[Sequence[int]], computed: int) -> list[list[int]]:
    """Starts for ``refine`` at ``computed`` steps from plans of the neighbouring budgets: each
    mask with one computed step more loses one (never step 0), each with one fewer gains one.
    Plans of neighbouring budgets found by real runs share most of their steps, so they are
    better starts than the planner's replayed-proxy masks (see ``refine``)."""
    out: dict[tuple, None] = {}
    for mask in masks:
        diff = sum(mask) - computed
        if diff not in (-1, 1):
            continue
        for i in range(1, len(mask)):
            if mask[i] == (1 if diff == 1 else 0):
                trial = list(mask)
                trial[i] = 1 - trial[i]
                out[tuple(trial)] = None
    return [list(m) for m in out]


class TrajectoryRecorder:
    """A forward hook for a module compiled to observe (every step computes, diffs measured):
    after each call, keep per cached loop and branch the Fn residual and the middle's residuals
    of the step just computed. ``trajectories()``: name -> ``Trajectory``."""

    def __init__(self, session, max_bytes: int = 2 << 30, outputs: bool = False):
        self.session, self.max_bytes, self.bytes, self.overflow = session, max_bytes, 0, False
        self.outputs = outputs
        self.steps: dict[str, dict[int, tuple]] = {}

    def _keep(self, tensors: list[torch.Tensor]) -> bool:
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        if self.bytes > self.max_bytes:
            self.overflow, self.steps = True, {}
        return not self.overflow

    def __call__(self, module, args, out) -> None:
        session = self.session
        if self.outputs and session.unsure is None and not self.overflow:  # the call's output, per branch
            per = self.steps.setdefault(state_label(WHOLE_CALL, session.branch), {})
            tensors = [t.detach().clone() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            if session.step not in per and tensors and self._keep(tensors):
                per[session.step] = (tensors[0], tensors)
        for st in self.session.states.values():
            rec = st.records[-1] if st.records else None
            buf = st.buffers.get(None)
            if rec is None or rec.step != st.step or rec.cached or buf is None or self.overflow:
                continue
            per = self.steps.setdefault(st.name, {})
            if st.step in per:
                continue
            if not self._keep([buf.reference, *buf.residuals]):
                return
            per[st.step] = (buf.reference, list(buf.residuals))

    def trajectories(self) -> dict[str, Trajectory]:
        out = {}
        for name, per in self.steps.items():
            steps = sorted(per)
            if steps != list(range(len(steps))):
                continue  # a gap: not every step computed
            traj: Trajectory = {GUIDE_STREAM: [per[k][0] for k in steps]}
            for s in range(len(per[0][1])):
                traj[s] = [per[k][1][s] for k in steps]
            out[name] = traj
        return out


def observe(model: torch.nn.Module, generate, cache_config=None, backend: str = "eager",
            max_bytes: int = 2 << 30, whole_call: bool = False) -> dict[str, Trajectory]:
    """Compile ``model`` to observe (``cache_config``'s Fn/Bn, every step computed), run
    ``generate()`` (one generation per call to it is expected to be scoped by the caller, e.g.
    ``dcp.generation``) and return each cached loop's trajectory. Several generations with the
    same step count are merged along the batch (dim 0), so one plan fits them all.
    ``whole_call=True`` also returns the call outputs' trajectory per CFG branch, under the
    names ``dcp.summary`` gives them (``wholecall.WHOLE_CALL``, then ``... [cfg branch 1]``):
    what a ``skip_whole_call`` plan forecasts (stream k: the k-th output tensor)."""
    from .. import api
    from ..config import DBCacheConfig

    base = cache_config if cache_config is not None else DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0)
    private = base.update(residual_diff_threshold=1e-12, max_warmup_steps=0, max_cached_steps=-1,
                          max_continuous_cached_steps=-1, max_accumulated_residual_diff_threshold=None,
                          steps_computation_mask=None, forecast_check=False, skip_whole_call=False)
    api.compile(model, private, backend=backend)
    runs: list[dict[str, Trajectory]] = []
    rec = TrajectoryRecorder(api._session(model), max_bytes, outputs=whole_call)
    hook = model.register_forward_hook(rec)
    try:
        for _ in generate():
            runs.append(rec.trajectories())
            rec.steps = {}
    finally:
        hook.remove()
    if rec.overflow:
        raise MemoryError(f"the observed residuals exceed max_bytes={max_bytes}")
    merged: dict[str, Trajectory] = {}
    for name in runs[0] if runs else []:
        parts = [r[name] for r in runs if name in r and len(r[name][GUIDE_STREAM]) == len(runs[0][name][GUIDE_STREAM])]
        merged[name] = {s: [torch.cat([p[s][k] for p in parts]) for k in range(len(parts[0][s]))] for s in parts[0]}
    return merged


#: the fillers a planned schedule is tried with (None: reuse the last computed residual)
FILLERS: tuple = (None, ("taylorseer", 1), ("taylorseer", 2))


def _filler(spec) -> Optional[CalibratorConfig]:
    from ..config import TaylorSeerCalibratorConfig

    return None if spec is None else TaylorSeerCalibratorConfig(taylorseer_order=spec[1])


#: the deferred corrections a whole-call plan is tried with (config fields): none, the
#: interpolation, and the interpolation weighted towards the forecast early in a gap
CORRECTIONS: tuple[dict, ...] = ({}, {"correct_skipped": True}, {"correct_skipped": True, "correct_skipped_power": 0.5})


def whole_call_fillers() -> list[tuple[CalibratorConfig, dict]]:
    """What ``refine`` chooses among to fill a whole-call plan's skipped steps: (calibrator, the
    correction's config fields) for TaylorSeer order 1 / 2 and DMD, each without the deferred
    correction, with it, and with it leaning on the forecast early in a gap
    (``correct_skipped_power=0.5``). Only a real run tells which helps: the correction pays on
    isolated skips, the weighted one on gaps of 2-4 steps."""
    from ..config import DMDCalibratorConfig, TaylorSeerCalibratorConfig

    cals = (TaylorSeerCalibratorConfig(taylorseer_order=1), TaylorSeerCalibratorConfig(taylorseer_order=2),
            DMDCalibratorConfig())
    return [(c, dict(fix)) for c in cals for fix in CORRECTIONS]


def budget_for(steps: int, target: float, full: float, weight: float) -> int:
    """The most computed steps whose speedup still reaches ``target``: ``full`` is the work of
    the uncached generation, ``weight`` what one cached step of the loop saves (1 and ``steps``
    for the steps metric)."""
    for computed in range(steps, 0, -1):
        executed = full - weight * (steps - computed)
        if executed > 0 and full / executed >= target - 1e-9:
            return computed
    return 1


def plan(traj: Union[Trajectory, Sequence[Trajectory]], computed: int, fillers=FILLERS) -> tuple[list[int], Optional[CalibratorConfig], float]:
    """The best (mask, filler) for ``computed`` computed steps: the filler whose planned path
    error is lowest. Returns (mask, calibrator config or None, path error)."""
    best = None
    for spec in fillers:
        cal = _filler(spec)
        mask, err = plan_steps(traj, computed, cal)
        if best is None or err < best[2]:
            best = (mask, cal, err)
    assert best is not None
    return best
