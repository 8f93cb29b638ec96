"""``dcp.tune``: propose ``residual_diff_threshold``, ``max_warmup_steps`` and
``max_continuous_cached_steps`` for a target speedup, from one observed generation, then
verify the proposal with one cached generation.

The three steps live in ``tuning/``: ``observe`` (1), ``simulate`` (2), and this module runs
them and verifies (3); the report is ``tuning/report``.

1. **Observe.** The model is compiled with a config that never caches but still measures:
   ``max_warmup_steps=0``, no caps, and a threshold of 1e-12 (a threshold of 0 would skip the
   diff altogether). Every step computes, so its output is the uncached reference; after every
   transformer call the Fn residual of that step (the tensor DBCache compares) is kept, and
   the relative L1 diff of every pair of steps ``D[j, k] = sum|R_k - R_j| / sum|R_j|`` is
   measured (the same formula as the runtime's).
2. **Propose.** The runtime's own rule chain (``DBCachePolicy``) is replayed on ``D``: a
   simulated cached step ``k`` compares its residual with the one of the last *simulated*
   computed step ``j``, i.e. ``D[j, k]``. For every warmup length and continuous-step cap,
   the smallest threshold whose simulated speedup reaches the target is found (bisection over
   the measured diffs, each raised by ``margin``); the lowest threshold wins (ties: the longer
   warmup, then the smaller cap). The simulation is approximate: once a step is cached the real
   trajectory drifts from the uncached one, so later residuals (and diffs) differ a little.
   When the residuals do not fit in ``max_residual_bytes``, only consecutive diffs ``d_k`` are
   kept and ``D[j, k]`` is approximated by ``d_{j+1} + ... + d_k`` (an upper bound, looser).
3. **Verify.** One cached generation with the proposal measures the truth: cached steps,
   speedup and the output's error against the uncached reference. If it falls short of the
   target, up to ``refine`` more generations raise the threshold just above the smallest
   diff of a step that was predicted cached but computed.

Speedup (``metric``):
- ``"steps"`` (default): middle runs of the uncached generation / middle runs executed, over
  every cached loop and CFG branch. For one loop: ``steps / computed steps``. This is the
  speedup if the middle blocks were all the work.
- ``"flops"``: what ``summary().ideal_speedup`` reports: FLOPs of the whole uncached call
  (glue, Fn, middle, Bn) over FLOPs executed; Fn, Bn and glue always run, so it is lower.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Optional, Sequence

import torch

from .config import CalibratorConfig, DBCacheConfig
from .stats import Summary
from .tuning.observe import (OBSERVE_THRESHOLD, _pairwise, _Recorder, _reconfigure, _targets, output_error)
from .tuning.report import LoopRows, StepRow, TuneReport, VerifyRun, _fmt  # noqa: F401 (the report's types)
from .tuning.simulate import Proposal, _next_threshold, _speedup, _Stream, pairwise_from_consecutive, propose, simulate

POLICIES = ("dbcache", "planned", "checked")  # dcp.tune(policies=...): DBCache is always proposed


def tune(pipe_or_module: Any, call: Callable[[], Any], target_speedup: float = 2.0,
         cache_config: Optional[DBCacheConfig] = None, *, metric: str = "steps", backend: str = "inductor",
         calibrator_config: Optional[CalibratorConfig] = None, max_warmup_steps: Optional[int] = None,
         max_continuous_cached_steps: Optional[int] = None, continuous_choices: Sequence[int] = (1, 2, 3, 4, -1),
         margin: float = 0.02, refine: int = 2, max_residual_bytes: int = 2 << 30,
         output: Optional[Callable[[Any], Any]] = None, path: str = "auto",
         policies: Sequence[str] = ("dbcache",), min_psnr: Optional[float] = None, probes: int = 5,
         plan_evals: int = 0) -> TuneReport:
    """Propose a DBCache threshold, warmup and continuous-step cap for ``target_speedup``, then
    verify it (see the module docstring).

    ``pipe_or_module``: a diffusers pipeline (every ``transformer*`` component) or a transformer.
    ``call``: runs one generation, e.g. ``lambda: pipe(prompt, num_inference_steps=28,
    generator=torch.Generator().manual_seed(0))``; it must be deterministic (fixed seed) so the
    runs are comparable. It is called ``2 + refinements`` times. A bare module's calls inside
    one ``call`` form one generation (``dcp.generation``).
    ``cache_config``: the base config (Fn/Bn, CFG settings, ``max_cached_steps`` ...); the
    three tuned fields are replaced. Default: ``DBCacheConfig()`` (F8B0).
    ``metric``: "steps" (middle runs / middle runs executed) or "flops" (``summary().ideal_speedup``).
    ``max_warmup_steps`` / ``max_continuous_cached_steps``: fix one instead of searching it
    (``continuous_choices``: the caps searched). ``margin``: the threshold sits this fraction
    above the largest diff it must accept. ``refine``: extra verify runs allowed when the first
    one falls short. ``output``: maps ``call``'s result to the tensor compared (default: the
    result itself, ``.images``, or its first item). ``backend`` / ``path``: as ``dcp.compile``
    (``path`` applies to a bare module; a pipeline's transformers take ``"auto"``).

    ``policies``: also try ``"planned"``: a static ``steps_computation_mask`` with the most
    computed steps that still reach the target, planned on the observed generation
    (``dit_cachepass.tuning.planner``) with the filler (none, TaylorSeer order 1 or 2) whose replayed
    path error is lowest; and / or ``"checked"``: a checked forecast (``forecast_check=True``)
    whose threshold, warmup, cap and calibrator (TaylorSeer order 1 or 2, DMD) are searched by
    replaying its decisions on the observed generation (``dit_cachepass.tuning.checked``). Each
    is verified like the DBCache proposal; the policy with the better verified output (PSNR,
    else relative L1) among those reaching the target wins. One transformer (a bare module or a
    pipeline with one): its loops and CFG branches share the mask / config. With
    ``metric="flops"``, "planned" also tries skipping the WHOLE call on the planned steps
    (``skip_whole_call=True``, ``report.policy == "planned call"``): a skipped step then costs
    nothing, so the plan computes more steps for the same FLOPs; it is verified without
    ``correct_skipped``, with it and with ``correct_skipped_power=0.5``. ``plan_evals``: up to this many more cached runs of ``call`` refine that
    plan (``planner.refine``: the real output error picks the mask and its filler: TaylorSeer
    order 1 / 2 or DMD, with and without ``correct_skipped``, ``planner.whole_call_fillers``); its
    result is one more candidate.

    ``min_psnr``: a quality floor instead of a speed target: the fastest verified run whose
    output PSNR against the uncached one is at least ``min_psnr`` dB, searched by bisection over
    targets between 1 and ``target_speedup`` (``probes`` tunings at most, each as above; every
    verified candidate lands in ``report.candidates``, the frontier the search saw). When no
    probe meets the floor, the best-PSNR one is returned with ``reached=False``.

    Leaves the module(s) compiled with the proposed config. Returns a :class:`TuneReport`.
    """
    from . import api

    if min_psnr is not None:
        kwargs = dict(metric=metric, backend=backend, calibrator_config=calibrator_config,
                      max_warmup_steps=max_warmup_steps, max_continuous_cached_steps=max_continuous_cached_steps,
                      continuous_choices=continuous_choices, margin=margin, refine=refine,
                      max_residual_bytes=max_residual_bytes, output=output, path=path, policies=policies,
                      plan_evals=plan_evals)
        return _tune_for_floor(pipe_or_module, call, float(min_psnr), target_speedup, cache_config, probes, kwargs)

    if metric not in ("steps", "flops"):
        raise ValueError(f"metric={metric!r} is invalid: expected 'steps' or 'flops'")
    if not (isinstance(target_speedup, (int, float)) and math.isfinite(target_speedup) and target_speedup >= 1):
        raise ValueError(f"target_speedup={target_speedup!r} is invalid: expected a finite number >= 1")
    base = cache_config if cache_config is not None else DBCacheConfig()
    if not isinstance(base, DBCacheConfig) or base.cache_type != "DBCache":
        raise TypeError("dcp.tune tunes a DBCacheConfig (DBPrune is not supported)")
    base.validate()
    # tune decides which steps compute: a base that skips whole calls on its own mask is tuned as
    # a DBCache config, and "planned call" (policies="planned", metric="flops") brings the skip back
    base = base.update(skip_whole_call=False, steps_computation_mask=None) if base.skip_whole_call else base
    unknown = [p for p in policies if p not in POLICIES]
    if not isinstance(plan_evals, int) or isinstance(plan_evals, bool) or plan_evals < 0:
        raise ValueError(f"plan_evals={plan_evals!r} is invalid: expected an int >= 0 (0: no refinement)")
    if isinstance(policies, str) or unknown or "dbcache" not in policies:
        raise ValueError(f"policies={policies!r} is invalid: expected a tuple with 'dbcache' and optionally "
                         "'planned' and / or 'checked'")
    extra = [p for p in POLICIES[1:] if p in policies]
    extract = output or (lambda r: r)
    targets = _targets(pipe_or_module)
    if not targets:
        raise ValueError(f"{type(pipe_or_module).__name__} has no transformer to tune")

    # 1. observe: compile with a private config that measures every diff and never caches
    private = base.update(residual_diff_threshold=OBSERVE_THRESHOLD, max_warmup_steps=0, max_cached_steps=-1,
                          max_continuous_cached_steps=-1, max_accumulated_residual_diff_threshold=None,
                          steps_computation_mask=None)
    if isinstance(pipe_or_module, torch.nn.Module):
        api.compile(pipe_or_module, private, calibrator_config=calibrator_config, backend=backend, path=path)
    else:
        api.enable_cache(pipe_or_module, private, calibrator_config=calibrator_config, backend=backend)
    sessions = [api._session(m) for m in targets]
    for s in sessions:
        if s.config is not private:  # enable_cache kept an existing session: compile anew
            api.compile(targets[sessions.index(s)], private, calibrator_config=calibrator_config, backend=backend)
    sessions = [api._session(m) for m in targets]

    def generate() -> Any:
        with contextlib.ExitStack() as stack:
            if isinstance(pipe_or_module, torch.nn.Module):
                stack.enter_context(api.generation(pipe_or_module))
            stack.enter_context(torch.no_grad())
            return extract(call())

    recorder = _Recorder(sessions, max_residual_bytes)
    hooks = [m.register_forward_hook(recorder) for m in targets]
    traj_rec = None
    if extra and len(targets) == 1:
        from .tuning.planner import TrajectoryRecorder

        traj_rec = TrajectoryRecorder(sessions[0], max_residual_bytes, outputs="planned" in extra and metric == "flops")
        hooks.append(targets[0].register_forward_hook(traj_rec))
    try:
        reference = generate()
    finally:
        for h in hooks:
            h.remove()
    notes: list[str] = []
    streams: list[_Stream] = []
    keys: list[tuple] = []
    full_steps, full_flops = 0.0, 0.0
    for s in sessions:
        summ = Summary.from_session(s)
        full_flops += summ.full_flops
        for (key, st), ls in zip(s.states.items(), summ.loops):
            if not st.records:
                continue
            n = max(r.step for r in st.records) + 1
            consecutive: list[Optional[float]] = [None] * n
            for r in st.records:
                consecutive[r.step] = r.diff
            if any(r.cached for r in st.records):
                notes.append(f"{st.name}: the observing run cached a step (a diff below {OBSERVE_THRESHOLD:g})")
            res = recorder.residuals.get((id(s), key))
            pw = _pairwise(res, n) if res and not recorder.overflow else pairwise_from_consecutive(consecutive)
            streams.append(_Stream(st.name, pw, consecutive, float(ls.middle_flops) if metric == "flops" else 1.0))
            keys.append((id(s), key))
            full_steps += len(st.records)
    recorder.residuals = {}
    if not streams:
        raise RuntimeError("dcp.tune: no cached loop ran during call(); check that call() runs the compiled "
                           f"model and that dcp.explain finds a loop (Fn={base.Fn_compute_blocks}, "
                           f"Bn={base.Bn_compute_blocks} must leave a middle)")
    if metric == "flops" and (full_flops <= 0 or not any(s.weight > 0 for s in streams)):
        notes.append("FLOPs could not be counted: the steps metric is used instead")
        metric = "steps"
        for st in streams:
            st.weight = 1.0
    full = full_flops if metric == "flops" else full_steps
    approximation = "cumulative" if recorder.overflow else "pairwise"
    if recorder.overflow:
        notes.append(f"the Fn residuals exceed max_residual_bytes={max_residual_bytes}: pairwise diffs are "
                     "approximated by summed consecutive diffs")

    # 2. propose
    warmups = [max_warmup_steps] if max_warmup_steps is not None else None
    conts = [max_continuous_cached_steps] if max_continuous_cached_steps is not None else list(continuous_choices)
    prop = propose(streams, base, float(target_speedup), full, warmups=warmups, continuous=conts, margin=margin)
    if not prop.reached:
        notes.append(f"no searched setting reaches {target_speedup:g}x in simulation; proposing the fastest "
                     f"({prop.speedup:.2f}x predicted)")

    # 3. verify (and refine)
    runs: list[VerifyRun] = []
    tried: list[tuple[Proposal, VerifyRun, dict, Any]] = []
    for attempt in range(1 + max(0, refine)):
        _reconfigure(sessions, prop.config)
        out = generate()
        actual: dict[tuple, dict[int, Any]] = {}
        cached_total, flops_full, flops_exec = 0, 0.0, 0.0
        for s in sessions:
            summ = Summary.from_session(s)
            flops_full += summ.full_flops
            flops_exec += summ.executed_flops
            for key, st in s.states.items():
                actual[(id(s), key)] = {r.step: r for r in st.records}
        weights_full = full
        executed = weights_full
        for st, k in zip(streams, keys):
            recs = actual.get(k, {})
            c = sum(1 for r in recs.values() if r.cached)
            cached_total += c
            executed -= st.weight * c
        speedup = weights_full / executed if executed > 0 else math.inf
        runs_total = sum(len(actual.get(k, {})) for k in keys)
        step_sp = runs_total / (runs_total - cached_total) if runs_total > cached_total else math.inf
        flops_sp = flops_full / flops_exec if flops_exec > 0 else None
        rel, psnr = output_error(out, reference)
        run = VerifyRun(prop.config.residual_diff_threshold, sum(len(sm.cached) for sm in prop.sims), cached_total,
                        prop.speedup, speedup, step_sp, flops_sp, rel, psnr)
        runs.append(run)
        tried.append((prop, run, actual, out))
        if speedup >= target_speedup - 1e-9 or attempt == max(0, refine):
            break
        # raise the threshold: just above the smallest diff that made a predicted-cached step
        # compute, or to where the simulation caches more
        t = prop.config.residual_diff_threshold
        missed = [r.diff for st_sim, k in zip(prop.sims, keys) for step, r in actual.get(k, {}).items()
                  if step in st_sim.cached and not r.cached and r.diff is not None and math.isfinite(r.diff)
                  and r.diff >= t]
        new_t = _next_threshold(streams, prop, full, missed, margin)
        if new_t is None:
            break
        cfg = prop.config.update(residual_diff_threshold=new_t)
        sims = [simulate(st.pairwise, cfg) for st in streams]
        prop = Proposal(cfg, sims, _speedup(streams, sims, full), prop.reached)
    # the first run that reaches the target, else the fastest one
    reached = [x for x in tried if x[1].speedup >= target_speedup - 1e-9]
    prop, run, actual, out = reached[0] if reached else max(tried, key=lambda x: x[1].speedup)
    if prop.config is not tried[-1][0].config:
        _reconfigure(sessions, prop.config)
    if len(tried) > 1:
        notes.append(f"{len(tried) - 1} refinement run(s): the first verify run fell short of the target")

    loops = []
    for st, sim, k in zip(streams, prop.sims, keys):
        recs = actual.get(k, {})
        rows = [StepRow(step, st.consecutive[step] if step < len(st.consecutive) else None, step in sim.cached,
                        sim.diffs.get(step), recs[step].cached if step in recs else None,
                        recs[step].diff if step in recs else None, recs[step].reason if step in recs else "")
                for step in range(st.pairwise.shape[0])]
        loops.append(LoopRows(st.name, rows))
    final_cfg = prop.config.update()
    if final_cfg.residual_diff_threshold >= 1.0:
        notes.append("the threshold is >= 1: every step after the warmup caches (up to the caps)")
    report = TuneReport(final_cfg, float(target_speedup), metric, prop.speedup, run.speedup, run.step_speedup,
                        run.flops_speedup, run.speedup >= target_speedup - 1e-9, loops, runs, approximation,
                        run.rel_l1, run.psnr, out, reference, notes, calibrator_config)
    report.candidates.append(("dbcache", final_cfg.strify(), run.speedup, run.psnr, run.rel_l1))
    if extra:
        _try_policies(report, extra, pipe_or_module, targets, traj_rec, streams, full, base, generate, backend, path,
                      metric, plan_evals)
    return report


def _tune_for_floor(pipe_or_module: Any, call: Callable[[], Any], floor: float, top: float,
                    cache_config: Optional[DBCacheConfig], probes: int, kwargs: dict) -> TuneReport:
    """``tune(min_psnr=floor)``: bisection over the target speedup in [1, ``top``]; the fastest
    verified report at or above the floor wins. The module is left compiled with the winner."""
    if not (isinstance(floor, float) and math.isfinite(floor)):
        raise ValueError(f"min_psnr={floor!r} is invalid: expected a finite number of dB")
    if not (isinstance(probes, int) and probes >= 1):
        raise ValueError(f"probes={probes!r} is invalid: expected an int >= 1")
    lo, hi, target = 1.0, float(top), float(top)
    seen: list[TuneReport] = []
    for _ in range(probes):
        r = tune(pipe_or_module, call, target, cache_config, **kwargs)
        seen.append(r)
        if r.psnr is None:
            raise ValueError("min_psnr: the output of call() has no PSNR (not image-like, 3+ dims); pass output= "
                             "to map it to an image tensor")
        if r.psnr >= floor:
            lo = max(lo, r.ideal_speedup)
            if r.ideal_speedup >= hi - 1e-3:
                break
        else:
            hi = min(hi, target)
        target = (lo + hi) / 2
        if hi - lo < 0.05:
            break
    ok = [r for r in seen if r.psnr >= floor]
    best = max(ok, key=lambda r: (r.ideal_speedup, r.psnr)) if ok else max(seen, key=lambda r: r.psnr)
    if best is not seen[-1]:  # leave the module(s) as the winner's run left them: tune it again (deterministic)
        best = tune(pipe_or_module, call, best.target_speedup, cache_config, **kwargs)
    best.reached = best.psnr is not None and best.psnr >= floor
    best.candidates = [c for r in seen for c in r.candidates]
    best.notes.append(f"quality floor {floor:g} dB: {len(seen)} probes, targets "
                      + ", ".join(f"{r.target_speedup:.2f}x -> {r.ideal_speedup:.2f}x at {_fmt(r.psnr, '.1f')} dB"
                                  for r in seen)
                      + ("" if ok else "; none met the floor: the best-PSNR run is returned"))
    return best


def _better(a: tuple, b: tuple, target: float) -> bool:
    """Is candidate ``a`` (speedup, psnr, rel) better than ``b``: reaching the target first, then
    the higher PSNR (or lower relative L1 where there is no PSNR)."""
    ra, rb = a[0] >= target - 1e-9, b[0] >= target - 1e-9
    if ra != rb:
        return ra
    if a[1] is not None and b[1] is not None:
        return a[1] > b[1]
    return a[2] is not None and b[2] is not None and a[2] < b[2]


def _try_policies(report: TuneReport, policies: Sequence[str], pipe_or_module: Any, targets: list, traj_rec: Any,
                  streams: list, full: float, base: DBCacheConfig, generate: Callable[[], Any], backend: str,
                  path: str, metric: str = "steps", plan_evals: int = 0) -> None:
    """Propose a planned schedule and / or a checked forecast on the observed trajectories (every
    cached loop and CFG branch of the one transformer: a mask or config serves them all), verify
    each like the DBCache proposal and keep the best (the transformer is left compiled with it);
    every verified candidate is recorded in ``report.candidates``. With ``metric="flops"``,
    "planned" also tries a plan that skips whole calls (``skip_whole_call``, "planned call"), with
    and without ``correct_skipped``: a skipped step then saves the whole call, which the steps
    metric (middle runs) cannot count."""
    from . import api
    from .runtime.wholecall import WHOLE_CALL
    from .tuning import checked, planner

    trajs = traj_rec.trajectories() if traj_rec is not None and not traj_rec.overflow else {}
    calls = [trajs.pop(k) for k in sorted(trajs) if k.startswith(WHOLE_CALL)]
    weights = {st.name: st.weight for st in streams}
    lengths = {len(t[planner.GUIDE_STREAM]) for t in trajs.values()}
    if not trajs or set(trajs) != set(weights) or len(lengths) != 1:
        report.notes.append(f"{'/'.join(policies)}: needs one transformer whose every loop and branch computed "
                            "each observed step; skipped")
        return
    (n,) = lengths
    names = sorted(trajs)
    per_step = sum(weights.values())  # what one step cached in every loop and branch saves
    computed = planner.budget_for(n, report.target_speedup, full, per_step)
    proposals: list[tuple[str, DBCacheConfig, Optional[CalibratorConfig]]] = []

    def install(cfg: DBCacheConfig, cal: Optional[CalibratorConfig]) -> None:
        api.compile(targets[0], cfg, calibrator_config=cal, backend=backend,
                    **({"path": path} if targets[0] is pipe_or_module else {}))

    if "planned" in policies:
        mask, cal, _ = planner.plan([trajs[k] for k in names], computed)
        proposals.append(("planned", base.update(steps_computation_mask=mask, steps_computation_policy="static",
                                                 max_warmup_steps=0), cal))
        if metric == "flops" and calls and len({len(t[planner.GUIDE_STREAM]) for t in calls}) == 1:
            mask, cal, _ = planner.plan(calls, planner.budget_for(n, report.target_speedup, full, full / n))
            call_cfg = base.update(steps_computation_mask=mask, max_warmup_steps=0, steps_computation_policy="static",
                                   skip_whole_call=True)
            # without the deferred correction, with it, and with it weighted towards the forecast
            # early in a gap: it helps Euler samplers on most plans, not all, and hurts multistep
            # ones; only a verified run can tell
            proposals += [("planned call", call_cfg.update(**fix), cal) for fix in planner.CORRECTIONS]
            if plan_evals:
                proposals.append(("planned call", *_refined_call(calls, call_cfg, install, generate, report,
                                                                 plan_evals)))
    if "checked" in policies:
        found = checked.search([trajs[k] for k in names], base, per_step * (n - computed), checked._calibrators(),
                               weights=[weights[k] for k in names])
        if found is None:
            report.notes.append("checked: no threshold caches enough steps for the target in the replay")
        else:
            proposals.append(("checked", found.config, found.calibrator))

    for policy, cfg, cal in proposals:
        install(cfg, cal)
        out = generate()
        summ = Summary.from_session(api._session(targets[0]))
        saved = sum(weights.get(lp.name, 0.0) * len(lp.cached_steps) for lp in summ.loops)
        whole = [len(lp.cached_steps) for lp in summ.loops if lp.name.startswith(WHOLE_CALL)]
        if whole:  # a skipped step (every branch's call) saves the step's whole work
            saved += full / n * sum(whole) / len(whole)
        cached = len(summ.cached_steps)
        speedup = full / (full - saved) if full > saved else math.inf
        rel, psnr = output_error(out, report.reference_output)
        tag = cfg.strify() + (f"+{cal.strify()}" if cal is not None else "")
        report.candidates.append((policy, tag, speedup, psnr, rel))
        if _better((speedup, psnr, rel), (report.ideal_speedup, report.psnr, report.rel_l1), report.target_speedup):
            report.config, report.calibrator_config, report.policy = cfg, cal, policy
            report.ideal_speedup, report.psnr, report.rel_l1, report.output = speedup, psnr, rel, out
            report.step_speedup = n / (n - cached) if n > cached else math.inf
            report.flops_speedup = summ.ideal_speedup
            report.reached = speedup >= report.target_speedup - 1e-9
            verdict = "leads"
        else:
            verdict = "tried and lost"
        report.notes.append(f"{policy} {verdict}: {tag} (verified {speedup:.2f}x, PSNR {_fmt(psnr, '.1f')} dB)")
    if proposals:  # leave the transformer compiled with the winner
        install(report.config, report.calibrator_config)


def _refined_call(calls: list, cfg: DBCacheConfig, install: Callable, generate: Callable[[], Any],
                  report: TuneReport, evals: int) -> tuple[DBCacheConfig, Optional[CalibratorConfig]]:
    """The whole-call plan ``cfg`` refined by up to ``evals`` real runs (``planner.refine``), from
    the planner's mask for each filler; the error is the output's relative L1 to the uncached one."""
    from .tuning import planner

    computed = sum(cfg.steps_computation_mask)
    starts = [planner.plan_steps(calls, computed, planner._filler(f))[0] for f in planner.FILLERS]

    def error(mask: list[int], filler: tuple) -> float:
        install(cfg.update(steps_computation_mask=mask, **filler[1]), filler[0])
        rel, _ = output_error(generate(), report.reference_output)
        return math.inf if rel is None else rel

    got = planner.refine(starts, planner.whole_call_fillers(), error, max_evals=evals)
    report.notes.append(f"planned call refined on {got.evals} real runs")
    return cfg.update(steps_computation_mask=got.mask, **got.filler[1]), got.filler[0]


def tune_digits(target_speedup: float = 2.0, steps: int = 20, per_class: int = 1, Fn: int = 1, Bn: int = 0,
                backend: str = "eager", metric: str = "steps", seed: int = 0, **opts: Any
                ) -> tuple[TuneReport, float, float]:
    """``dcp.tune`` on the shipped trained digits model (batched CFG, ``steps`` Euler steps,
    ``per_class`` samples of each digit). Returns (report, accuracy uncached, accuracy tuned)
    as read by the shipped digit classifier."""
    from .demo_model import classifier_accuracy, load_digits_dit, sample

    labels = torch.arange(10).repeat_interleave(per_class)
    model, info = load_digits_dit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = tune(model, lambda: sample(model, labels, steps=steps, seed=seed, info=info), target_speedup,
                      DBCacheConfig(Fn_compute_blocks=Fn, Bn_compute_blocks=Bn), backend=backend, metric=metric,
                      **opts)
    return (report, classifier_accuracy(report.reference_output, labels),
            classifier_accuracy(report.output, labels))


def run_cli(args: Any) -> int:
    """``python -m dit_cachepass tune``: tune on the shipped digits model and print the report."""
    report, acc_ref, acc = tune_digits(args.target, steps=args.steps, per_class=args.per_class, Fn=args.fn, Bn=args.bn,
                                       backend=args.backend, metric=args.metric, seed=args.seed, refine=args.refine,
                                       policies=tuple(dict.fromkeys(["dbcache", *getattr(args, "policies", [])])),
                                       min_psnr=getattr(args, "min_psnr", None),
                                       plan_evals=getattr(args, "plan_evals", 0))
    print(report)
    print(f"digit accuracy (shipped classifier, {10 * args.per_class} samples): uncached {acc_ref:.0%}, "
          f"tuned {acc:.0%}")
    return 0 if report.reached else 1
