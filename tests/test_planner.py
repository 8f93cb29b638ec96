"""``planner``: planned schedules from an observed trajectory (replayed forecast error, local search)."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.tuning import planner
from dit_cachepass.runtime.state import GUIDE_STREAM

N = 16


def _traj(values):
    vals = [torch.full((2, 3), float(v)) for v in values]
    return {GUIDE_STREAM: vals, 0: vals}


def test_path_error_replays_the_calibrator():
    line = _traj([1 + k for k in range(N)])
    every_other = [1 if k % 2 == 0 else 0 for k in range(N)]
    reuse = planner.path_error(line, every_other, None)
    # reuse misses each cached step by one unit: sum over odd k of 1 / (1 + k)
    assert reuse == pytest.approx(sum(1 / (1 + k) for k in range(1, N, 2)))
    # TaylorSeer order 1 extrapolates a line exactly once its first derivative exists (pipeline step 3)
    ts = planner.path_error(line, every_other, dcp.TaylorSeerCalibratorConfig(taylorseer_order=1))
    assert ts == pytest.approx(sum(1 / (1 + k) for k in (1, 3)))
    assert planner.path_error(line, [1] * N, None) == 0.0


def test_plan_computes_where_the_trajectory_jumps():
    """Flat, one jump at step 9: with reuse, the only error-free budget-2 plan computes step 0 and step 9."""
    traj = _traj([1.0] * 9 + [5.0] * (N - 9))
    mask, err = planner.plan_steps(traj, 2, None)
    assert mask == [1] + [0] * 8 + [1] + [0] * (N - 10) and err == 0.0
    # the plan never exceeds its budget and always computes step 0
    for budget in (3, 5, 8):
        mask, _ = planner.plan_steps(traj, budget, dcp.TaylorSeerCalibratorConfig())
        assert sum(mask) == budget and mask[0] == 1


def test_plan_rejects_impossible_budgets():
    with pytest.raises(ValueError, match="computed"):
        planner.plan_steps(_traj(range(N)), N + 1, None)


def test_observe_records_every_step_and_merges_generations():
    pytest.importorskip("diffusers")
    from dit_cachepass.demo_model import load_digits_dit, sample

    torch.set_num_threads(1)
    model, info = load_digits_dit()
    labels = torch.arange(3)
    trajs = planner.observe(model, lambda: (sample(model, labels, steps=6, seed=s, info=info) for s in (0, 1)))
    (traj,) = trajs.values()
    assert set(traj) == {GUIDE_STREAM, 0} and len(traj[0]) == 6
    assert traj[0][0].shape[0] == 2 * 2 * len(labels)  # two generations of a CFG batch (2 x 3)
    assert all(torch.isfinite(t).all() for t in traj[0])
    # a planned static schedule then runs: its mask's zeros are the cached steps
    mask, _ = planner.plan_steps(traj, 3, dcp.TaylorSeerCalibratorConfig())
    dcp.compile(model, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=0,
                                         steps_computation_mask=mask, steps_computation_policy="static"),
                calibrator_config=dcp.TaylorSeerCalibratorConfig(), backend="eager")
    with dcp.generation(model):
        out = sample(model, labels, steps=6, seed=5, info=info)
    assert torch.isfinite(out).all()
    assert dcp.summary(model).cached_steps == [k for k in range(6) if not mask[k]]


def test_tune_tries_a_planned_schedule_and_its_report_reproduces_the_verified_run():
    pytest.importorskip("diffusers")
    from dit_cachepass.demo_model import load_digits_dit, sample

    torch.set_num_threads(1)
    model, info = load_digits_dit()
    labels = torch.arange(10)
    call = lambda: sample(model, labels, steps=12, seed=5, info=info)  # noqa: E731
    report = dcp.tune(model, call, 2.0, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0),
                      backend="eager", policies=("dbcache", "planned"))
    assert [c[0] for c in report.candidates] == ["dbcache", "planned"]
    winner = max(report.candidates, key=lambda c: (c[2] >= 2.0 - 1e-9, c[3]))
    assert report.policy == winner[0] and report.psnr == winner[3]
    fresh, _ = load_digits_dit()
    dcp.compile(fresh, report.config, calibrator_config=report.calibrator_config, backend="eager")
    with dcp.generation(fresh):
        assert torch.equal(sample(fresh, labels, steps=12, seed=5, info=info), report.output)
    with pytest.raises(ValueError, match="policies"):
        dcp.tune(model, call, 2.0, policies=("magic",))


def _real(target, bad_filler="none of them"):
    """A stand-in for a real run's error: how far the computed steps are from ``target``'s, plus a
    penalty for one filler; counts its calls."""
    calls = []

    def error(mask, filler):
        calls.append((tuple(mask), id(filler)))
        return sum(abs(a - b) for a, b in zip(mask, target)) + (5.0 if filler == bad_filler else 0.0)
    return error, calls


def test_refine_moves_computed_steps_to_the_real_optimum_and_keeps_the_budget():
    t1, t2 = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1), dcp.TaylorSeerCalibratorConfig(taylorseer_order=2)
    target = [1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0]
    start = [1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    error, calls = _real(target, bad_filler=t1)
    got = planner.refine([start], [t1, t2], error)
    assert got.mask == target and got.error == 0.0 and got.filler is t2
    assert got.evals == len(set(calls)) == len(calls)  # every (mask, filler) pair runs once
    assert sum(got.mask) == sum(start) and got.mask[0] == 1


def test_refine_stops_at_its_budget_and_starts_from_the_best_start():
    target = [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    far, near = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0]
    error, calls = _real(target)
    got = planner.refine([far, near], [None], error, max_evals=3)
    assert len(calls) == 3 and got.evals == 3
    assert got.error <= 2.0 and got.mask != far  # began from the nearer start (error 2; the far one's is 4)
    with pytest.raises(ValueError, match="max_evals"):
        planner.refine([far], [None], error, max_evals=0)


def test_neighbour_starts_drop_or_add_one_step_and_never_step_0():
    up, down = [1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 0, 0]
    got = planner.neighbour_starts([up, down, [1, 1, 1, 1, 1, 1]], 3)  # the all-ones mask is 3 away: no start
    assert sorted(map(tuple, got)) == sorted({(1, 0, 0, 1, 0, 1), (1, 1, 0, 0, 0, 1), (1, 1, 0, 1, 0, 0),
                                              (1, 1, 0, 1, 0, 0), (1, 0, 1, 1, 0, 0), (1, 0, 0, 1, 1, 0),
                                              (1, 0, 0, 1, 0, 1)})
    assert all(m[0] == 1 and sum(m) == 3 for m in got) and len(got) == len({tuple(m) for m in got})


def test_refine_screens_many_starts_with_some_fillers_and_still_chooses_among_all_at_the_end():
    t1, t2 = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1), dcp.TaylorSeerCalibratorConfig(taylorseer_order=2)
    target = [1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0]
    starts = planner.neighbour_starts([[1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0]], 4)
    error, calls = _real(target, bad_filler=t2)
    got = planner.refine(starts, [t1, t2], error, screen=[1])
    assert [f for _, f in calls[:len(starts)]] == [id(t2)] * len(starts)  # the starts were scored with t2 only
    assert got.mask == target and got.filler is t1 and got.error == 0.0  # the final choice sees every filler
