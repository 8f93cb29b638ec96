"""``tuning.checked``: a checked forecast's decisions replayed on an observed trajectory, the
threshold search over them, and ``dcp.tune(policies=(..., "checked"))`` (trained digits model:
its steps change slowly, so a checked forecast caches at small thresholds)."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.tuning import checked, planner
from dit_cachepass.runtime.state import GUIDE_STREAM

pytest.importorskip("diffusers")
from dit_cachepass.demo_model import load_digits_dit, sample  # noqa: E402

STEPS = 12
LABELS = torch.arange(5)
BASE = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0)
TS1 = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1)


@pytest.fixture(scope="module")
def observed():
    torch.set_num_threads(1)
    model, info = load_digits_dit()
    gen = lambda: (sample(model, LABELS, steps=STEPS, seed=7, info=info) for _ in range(1))  # noqa: E731
    (traj,) = planner.observe(model, gen).values()
    return traj, info


def test_replay_takes_the_runtime_decisions_until_the_first_cached_step(observed):
    """Until a step is cached the real trajectory is the observed one, so the replayed diffs and
    decisions must equal the runtime's there (after it, the real run drifts)."""
    traj, info = observed
    cfg = BASE.update(residual_diff_threshold=0.25, max_warmup_steps=2, forecast_check=True)
    memo: dict = {}
    cached, err = checked.replay(traj, cfg, TS1, memo)
    assert cached and err > 0, "nothing cached in the replay: the comparison would prove little"
    model, _ = load_digits_dit()
    dcp.compile(model, cfg, calibrator_config=TS1, backend="eager")
    with dcp.generation(model):
        sample(model, LABELS, steps=STEPS, seed=7, info=info)
    records = dcp.summary(model).loops[0].steps
    first = cached[0]
    assert [r.step for r in records if r.cached][0] == first
    for r in records[:first + 1]:
        if r.diff is not None:
            replayed = memo[(TS1.strify(), tuple(range(r.step)), r.step, GUIDE_STREAM)]
            assert replayed == pytest.approx(r.diff, rel=1e-4), r


def test_search_finds_the_lowest_threshold_that_caches_enough(observed):
    traj, _ = observed
    need = STEPS // 2
    found = checked.search(traj, BASE, need, [TS1], warmups=(2,), continuous=(-1,))
    assert found is not None and len(found.cached[0]) >= need and found.config.forecast_check
    assert checked.replay(traj, found.config, TS1) == (found.cached[0], pytest.approx(found.path_error))
    lower = found.config.update(residual_diff_threshold=found.config.residual_diff_threshold * 0.995)
    assert len(checked.replay(traj, lower, TS1)[0]) < need
    assert checked.search(traj, BASE, STEPS, [TS1], warmups=(2,), continuous=(-1,)) is None  # warmup computes


def test_tune_verifies_a_checked_forecast_and_its_report_reproduces_the_verified_run():
    torch.set_num_threads(1)
    model, info = load_digits_dit()
    call = lambda: sample(model, torch.arange(10), steps=STEPS, seed=5, info=info)  # noqa: E731
    report = dcp.tune(model, call, 2.0, BASE, backend="eager", policies=("dbcache", "checked"))
    assert [c[0] for c in report.candidates] == ["dbcache", "checked"]
    assert "_FC" in report.candidates[1][1]  # the checked candidate is a forecast_check config
    winner = max(report.candidates, key=lambda c: (c[2] >= 2.0 - 1e-9, c[3]))
    assert report.policy == winner[0] and report.psnr == winner[3]
    fresh, _ = load_digits_dit()
    dcp.compile(fresh, report.config, calibrator_config=report.calibrator_config, backend="eager")
    with dcp.generation(fresh):
        assert torch.equal(sample(fresh, torch.arange(10), steps=STEPS, seed=5, info=info), report.output)


def test_tune_with_a_quality_floor_returns_the_fastest_verified_run_above_it():
    """``min_psnr``: bisection over targets; every probe's candidates are kept (the frontier seen),
    the report is the fastest one at or above the floor, and the module is left as its run."""
    torch.set_num_threads(1)
    model, info = load_digits_dit()
    call = lambda: sample(model, torch.arange(10), steps=STEPS, seed=5, info=info)  # noqa: E731
    floor = 35.0
    report = dcp.tune(model, call, 3.0, BASE, backend="eager", min_psnr=floor, probes=4)
    assert report.reached and report.psnr >= floor
    seen = [c for c in report.candidates if c[3] is not None]
    assert len(seen) >= 2 and "quality floor" in report.notes[-1]
    assert report.ideal_speedup == pytest.approx(max(c[2] for c in seen if c[3] >= floor))
    assert any(c[3] < floor for c in seen) or report.ideal_speedup >= 3.0 - 1e-3  # the floor bound the search
    with dcp.generation(model):
        assert torch.equal(sample(model, torch.arange(10), steps=STEPS, seed=5, info=info), report.output)
    with pytest.raises(ValueError, match="min_psnr"):
        dcp.tune(model, call, 2.0, BASE, backend="eager", min_psnr=float("nan"))


def test_tune_tries_planned_and_checked_on_a_true_cfg_pipeline():
    """A FluxPipeline with true CFG (a cond and an uncond branch, named by the pipeline): one
    mask / config serves both branches, and the report reproduces the verified run on a fresh
    pipeline. Random tiny model: the mechanism is checked here, quality on the trained ones."""
    from diffusers import FluxPipeline
    from test_state_pipelines import pipe_for, t2i, tiny_flux

    pipe = pipe_for(FluxPipeline, tiny_flux(), cached=False)
    call = lambda: t2i(pipe, 3, 8)  # noqa: E731
    report = dcp.tune(pipe, call, 1.6, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0), backend="eager",
                      policies=("dbcache", "planned", "checked"))
    assert [c[0] for c in report.candidates] == ["dbcache", "planned", "checked"], report.notes
    names = [lp.name for lp in report.loops]  # the observed loop, per branch
    assert len(names) == 2 and names[1].endswith("[uncond]")
    fresh = pipe_for(FluxPipeline, tiny_flux(), cached=False)
    dcp.enable_cache(fresh, report.config, calibrator_config=report.calibrator_config, backend="eager")
    assert torch.equal(t2i(fresh, 3, 8), report.output)
