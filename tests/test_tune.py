"""dcp.tune: the simulation of the decision rule on synthetic diffs, the search, and one tune
on the shipped trained digits model (eager backend, 10 samples, 20 steps: ~30 s on 2 cores)."""

import math
import sys

import numpy as np
import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.tuning.observe import output_error
from dit_cachepass.tuning.simulate import Simulation, _Stream, _speedup, pairwise_from_consecutive, propose, simulate

# consecutive diffs: d[k] = diff of step k vs step k-1 (d[0] unused)
DIFFS = [None, 0.5, 0.05, 0.05, 0.05, 0.05, 0.5, 0.05, 0.05]


def cfg(t, w=1, mc=-1, **kw):
    return dcp.DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=t, max_warmup_steps=w,
                             max_continuous_cached_steps=mc, **kw)


def test_pairwise_from_consecutive_sums_the_steps_between():
    pw = pairwise_from_consecutive(DIFFS)
    assert pw.shape == (9, 9)
    assert pw[1, 2] == pytest.approx(0.05) and pw[1, 4] == pytest.approx(0.15) and pw[0, 2] == pytest.approx(0.55)
    assert np.isnan(pw[2, 1]) and np.isnan(pw[3, 3])


def test_simulate_measures_against_the_last_computed_step():
    pw = pairwise_from_consecutive(DIFFS)
    sim = simulate(pw, cfg(0.12))
    # 1: 0.5 computes; 2: 0.05, 3: 0.10 (vs step 1) cache; 4: 0.15 computes; 5 caches; 6: 0.55 computes
    assert sim.cached == [2, 3, 5, 7, 8]
    assert sim.diffs[3] == pytest.approx(0.10) and sim.diffs[4] == pytest.approx(0.15)
    assert sim.reasons[0] == "warmup" and sim.reasons[4] == "diff>=threshold"
    assert sim.computed == 4


def test_simulate_follows_warmup_and_caps():
    pw = pairwise_from_consecutive(DIFFS)
    assert simulate(pw, cfg(0.12, mc=1)).cached == [2, 4, 7]  # every cached step is followed by a computed one
    assert simulate(pw, cfg(0.12, w=4)).cached == [4, 5, 7, 8]
    assert simulate(pw, cfg(0.12, max_cached_steps=2)).cached == [2, 3]
    assert simulate(pw, cfg(2.0, w=3)).cached == [3, 4, 5, 6, 7, 8]  # threshold >= 1: always cache
    nan = pw.copy()
    nan[1, 2] = math.nan
    assert 2 not in simulate(nan, cfg(0.12)).cached  # a non-finite diff computes


def _brute_force_min_threshold(pw, target, warmups, conts, margin):
    best = math.inf
    vals = sorted({float(v) * (1 + margin) for v in pw[np.isfinite(pw)] if v > 0})
    for w in warmups:
        for mc in conts:
            for t in vals:
                sim = simulate(pw, cfg(t, w=w, mc=mc))
                if sim.steps / sim.computed >= target - 1e-9:
                    best = min(best, t)
                    break
    return best


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_propose_reaches_the_target_with_the_lowest_threshold(target):
    rng = np.random.default_rng(0)
    d = [None] + list(np.r_[0.4, rng.uniform(0.05, 0.15, 12), 0.3, 0.5])
    pw = pairwise_from_consecutive(d)
    n = pw.shape[0]
    stream = _Stream("loop", pw, d, 1.0)
    base = dcp.DBCacheConfig(Fn_compute_blocks=1)
    conts = (1, 2, 3, -1)
    prop = propose([stream], base, target, float(n), continuous=conts, margin=0.02)
    assert prop.reached and prop.speedup >= target
    sim = prop.sims[0]
    assert sim.cached == simulate(pw, prop.config).cached
    assert prop.speedup == pytest.approx(n / sim.computed)
    assert prop.config.residual_diff_threshold == pytest.approx(
        _brute_force_min_threshold(pw, target, range(1, n), conts, 0.02))
    assert prop.config.Fn_compute_blocks == 1  # the base's other fields are kept


def test_propose_unreachable_target_returns_the_fastest():
    pw = pairwise_from_consecutive([None, 0.1, 0.1, 0.1])
    prop = propose([_Stream("l", pw, [], 1.0)], dcp.DBCacheConfig(Fn_compute_blocks=1), 10.0, 4.0,
                   warmups=[1, 2], continuous=[1, -1])
    assert not prop.reached and prop.speedup == pytest.approx(4.0 / 1)  # everything after step 0 cached


def test_speedup_weights_middle_work():
    streams = [_Stream("a", np.zeros((4, 4)), [], 3.0), _Stream("b", np.zeros((4, 4)), [], 1.0)]
    sims = [Simulation([1, 2], {}, {}, 4), Simulation([3], {}, {}, 4)]
    assert _speedup(streams, sims, 20.0) == pytest.approx(20.0 / (20 - 6 - 1))


def test_output_error():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.full((2, 1, 4, 4), 0.5)
    rel, psnr = output_error(a + 0.5, b)
    assert rel == 0 and math.isinf(psnr)
    rel, psnr = output_error(b + 0.05, b)
    assert rel == pytest.approx(0.1, rel=1e-4) and psnr == pytest.approx(10 * math.log10(1 / 0.0025))
    assert output_error(torch.ones(3), torch.ones(4)) == (None, None)


def test_cli_tune_arguments(monkeypatch):
    from dit_cachepass.tools import cli

    seen = []
    monkeypatch.setattr(sys.modules["dit_cachepass.tune"], "run_cli", lambda a: seen.append(a) or 0)
    assert cli.main(["tune", "--target", "1.5", "--steps", "12", "--metric", "flops"]) == 0
    a = seen[-1]
    assert (a.target, a.steps, a.metric, a.fn, a.bn, a.backend) == (1.5, 12, "flops", 1, 0, "eager")
    assert a.min_psnr is None and a.policies == ["dbcache"] and a.plan_evals == 0
    assert cli.main(["tune", "--min-psnr", "40", "--policies", "planned", "checked", "--plan-evals", "12"]) == 0
    assert seen[-1].min_psnr == 40.0 and seen[-1].policies == ["planned", "checked"] and seen[-1].plan_evals == 12


def test_tune_digits_reaches_the_target_and_keeps_accuracy():
    from dit_cachepass.tune import tune_digits

    steps, target = 20, 2.0
    report, acc_ref, acc = tune_digits(target, steps=steps, per_class=1, backend="eager")
    loop = report.loops[0]
    assert len(loop.rows) == steps and report.metric == "steps"
    predicted_computed = steps - len(loop.predicted_cached_steps)
    actual_computed = steps - len(loop.cached_steps)
    assert actual_computed <= predicted_computed + 1 or report.ideal_speedup >= steps / (steps / target + 1)
    assert report.predicted_speedup >= target
    assert report.ideal_speedup == pytest.approx(steps / actual_computed)
    assert acc_ref == 1.0 and acc == 1.0
    cfg = report.config
    assert isinstance(cfg, dcp.DBCacheConfig) and cfg.Fn_compute_blocks == 1 and cfg.Bn_compute_blocks == 0
    assert 0 < cfg.residual_diff_threshold < 1 and cfg.max_warmup_steps >= 1
    assert report.rel_l1 is not None and report.rel_l1 < 0.1 and report.psnr > 25
    text = str(report)
    assert "predicted cached" in text and "actual cached" in text and cfg.strify() in text
