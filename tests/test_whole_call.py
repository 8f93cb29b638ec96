"""``skip_whole_call``: planned steps that skip the whole transformer call (runtime/wholecall.py).

Runs the shipped trained digits FluxTransformer2DModel (no threshold is involved: the mask decides)."""

import dataclasses
import re
import warnings

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.runtime.calibrators import make_calibrator
from dit_cachepass.runtime.state import GUIDE_STREAM
from dit_cachepass.runtime.wholecall import WHOLE_CALL
from dit_cachepass.tuning import planner

pytest.importorskip("diffusers")
from dit_cachepass.demo_model import load_digits_dit, make_ids, pack, conditioning, sample  # noqa: E402

STEPS = 12
MASK = [1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


@pytest.fixture(scope="module")
def digits():
    return load_digits_dit()


def _config(mask=MASK, **kw):
    return dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, steps_computation_mask=mask,
                             skip_whole_call=True, **kw)


class _Reference(torch.nn.Module):
    """The written-out rule: call the model on the mask's 1s, else forecast its output with a
    fresh calibrator of the same config (or reuse the last output). ``correct``: a computed step
    after skipped ones also returns, per skipped step s, the line between the computed outputs
    around it at s minus what s returned, times ``w ** power`` (w: how far across the gap s is)."""

    def __init__(self, model, mask, calibrator, correct=False, power=0.0):
        super().__init__()
        self.model, self.mask, self.k, self.correct, self.power = model, mask, 0, correct, power
        self.cal = make_calibrator(dataclasses.replace(calibrator, enable_calibrator=True)) if calibrator else None
        self.last, self.last_step, self.skipped = None, None, []

    def forward(self, **kw):
        k, self.k = self.k, self.k + 1
        if k == 0 or self.mask[k]:
            out = self.model(**kw)[0]
            w = {s: (s - self.last_step) / (k - self.last_step) for s, _ in self.skipped}
            fix = sum((w[s] ** self.power * (self.last + w[s] * (out - self.last) - f)
                       for s, f in self.skipped), torch.zeros_like(out)) if self.correct else 0
            self.last, self.last_step, self.skipped = out, k, []
            if self.cal is not None:
                self.cal.update(0, out, k)
            return (out + fix,)
        pred = self.cal.forecast(0, k, None) if self.cal is not None else self.last
        self.skipped.append((k, pred))
        return (pred,)


@pytest.mark.parametrize("calibrator", [None, dcp.TaylorSeerCalibratorConfig(taylorseer_order=1),
                                        dcp.TaylorSeerCalibratorConfig(taylorseer_order=2)],
                         ids=["reuse", "T1O1", "T1O2"])
def test_skipped_calls_return_the_forecast_of_the_output_and_save_the_whole_call(digits, calibrator):
    model, info = digits
    labels = torch.arange(4)
    with torch.no_grad():
        expected = sample(_Reference(model, MASK, calibrator), labels, steps=STEPS, seed=3, info=info)
    dcp.compile(model, _config(), calibrator_config=calibrator, backend="eager")
    try:
        with dcp.generation(model):
            got = sample(model, labels, steps=STEPS, seed=3, info=info)
        s = dcp.summary(model)
    finally:
        dcp.disable(model)
    assert torch.equal(got, expected)
    skipped = [k for k, v in enumerate(MASK) if v == 0]
    assert s.loops[0].name == WHOLE_CALL and s.cached_steps == skipped
    assert all(not lp.cached_steps for lp in s.loops[1:])  # the loops inside never cache on their own
    assert s.ideal_speedup == pytest.approx(STEPS / sum(MASK))  # a skipped call executes nothing


@pytest.mark.parametrize("calibrator,power", [(None, 0.0), (dcp.TaylorSeerCalibratorConfig(taylorseer_order=1), 0.0),
                                              (dcp.TaylorSeerCalibratorConfig(taylorseer_order=2), 0.5)],
                         ids=["reuse", "T1O1", "T1O2-power0.5"])
def test_correct_skipped_adds_the_skipped_steps_error_to_the_next_computed_output(digits, calibrator, power):
    model, info = digits
    labels = torch.arange(4)
    with torch.no_grad():
        expected = sample(_Reference(model, MASK, calibrator, correct=True, power=power), labels, steps=STEPS, seed=3,
                          info=info)
        plain = sample(_Reference(model, MASK, calibrator), labels, steps=STEPS, seed=3, info=info)
        unweighted = sample(_Reference(model, MASK, calibrator, correct=True), labels, steps=STEPS, seed=3, info=info)
    dcp.compile(model, _config(correct_skipped=True, correct_skipped_power=power), calibrator_config=calibrator,
                backend="eager")
    try:
        with dcp.generation(model):
            got = sample(model, labels, steps=STEPS, seed=3, info=info)
        assert dcp.summary(model).ideal_speedup == pytest.approx(STEPS / sum(MASK))  # no extra work
    finally:
        dcp.disable(model)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the correction changed the images
    if power:  # and its weight did: the mask has a gap of 2, where w < 1 at both skipped steps
        assert (got - unweighted).abs().max() > 1e-3


def test_correct_skipped_brings_an_euler_sampler_back_towards_the_uncached_images(digits):
    """On the trained model, 28 steps at 2x with a plan of mostly isolated skips (the frontier's):
    the corrected run is closer to the uncached one than the plain forecast. (Not on every plan:
    with 20 steps and strictly alternating skips it is a little worse, so tuning verifies it.)"""
    model, info = digits
    labels, steps = torch.arange(10), 28
    mask = [int(c) for c in "1101001010101001001010101011"]
    with torch.no_grad():
        truth = sample(model, labels, steps=steps, seed=7, info=info)
    err = {}
    for correct in (False, True):
        dcp.compile(model, _config(mask, correct_skipped=correct), backend="eager",
                    calibrator_config=dcp.TaylorSeerCalibratorConfig(taylorseer_order=1))
        with dcp.generation(model):
            err[correct] = float(((sample(model, labels, steps=steps, seed=7, info=info) - truth) ** 2).mean())
        dcp.disable(model)
    assert err[True] < 0.7 * err[False]  # measured: MSE 4.8e-6 vs 1.05e-5 (+3.4 dB)


def test_a_skipped_call_keeps_the_output_type(digits):
    """``return_dict=True``: the forecast comes back as the model's output class."""
    model, info = digits
    x = pack(torch.randn(2, 1, info.image_size, info.image_size), info.patch)
    ehs, pooled = conditioning(info, torch.arange(2))
    img_ids, txt_ids = make_ids(info.image_size, info.patch, ehs.shape[1])
    kw = dict(hidden_states=x, encoder_hidden_states=ehs, pooled_projections=pooled, img_ids=img_ids, txt_ids=txt_ids)
    dcp.compile(model, _config([1, 0, 0]), backend="eager")
    try:
        with torch.no_grad(), dcp.generation(model):
            first = model(timestep=torch.full((2,), 1.0), **kw)
            second = model(timestep=torch.full((2,), 0.9), **kw)
        assert type(second) is type(first) and torch.equal(second.sample, first.sample)
        assert second.sample is not first.sample  # a copy: changing one output in place leaves the cache alone
        assert dcp.summary(model).cached_steps == [1]
    finally:
        dcp.disable(model)


def _bare_calls(model, info, mask, batches, values=None):
    """One generation of bare calls under ``mask``, one per timestep, with the given batch sizes (and a
    NaN input where ``values`` says so); returns the summary's whole-call record."""
    ehs_all, pooled_all = conditioning(info, torch.arange(4))
    img_ids, txt_ids = make_ids(info.image_size, info.patch, ehs_all.shape[1])
    dcp.compile(model, _config(mask), backend="eager")
    try:
        with torch.no_grad(), dcp.generation(model), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for k, b in enumerate(batches):
                g = torch.Generator().manual_seed(k)
                x = pack(torch.randn(b, 1, info.image_size, info.image_size, generator=g), info.patch)
                if values is not None and values[k] is not None:
                    x = torch.full_like(x, values[k])
                out = model(hidden_states=x, timestep=torch.full((b,), 1.0 - 0.1 * k),
                            encoder_hidden_states=ehs_all[:b], pooled_projections=pooled_all[:b], img_ids=img_ids,
                            txt_ids=txt_ids, return_dict=False)[0]
                assert out.shape == x.shape
        return dcp.summary(model).loops[0].steps
    finally:
        dcp.disable(model)


def test_an_input_of_another_shape_computes_instead_of_returning_the_stale_output(digits):
    recs = _bare_calls(*digits, [1, 0, 0, 0], [2, 2, 3, 3])
    # (the mask's leading 1s are warmup steps, as in cache-dit)
    assert [(r.cached, r.reason) for r in recs] == [(False, "warmup"), (True, "mask-static"),
                                                    (False, "shape-change"), (True, "mask-static")]


def test_a_non_finite_output_is_never_forecast(digits):
    recs = _bare_calls(*digits, [1, 1, 0, 0], [2, 2, 2, 2], values=[None, float("nan"), None, None])
    # step 1's NaN output is not kept: step 2 finds no output to forecast from and computes
    assert [(r.cached, r.reason) for r in recs] == [(False, "warmup"), (False, "warmup"), (False, "no-reference"),
                                                    (True, "mask-static")]


def test_config_asks_for_a_mask_and_refuses_a_checked_forecast():
    with pytest.raises(ValueError, match="skip_whole_call=True is invalid.*steps_computation_mask"):
        dcp.DBCacheConfig(skip_whole_call=True)
    with pytest.raises(ValueError, match="correct_skipped=True is invalid.*skip_whole_call"):
        dcp.DBCacheConfig(steps_computation_mask=[1, 0], correct_skipped=True)
    assert _config([1, 0], correct_skipped=True).strify().endswith("_WC_DC")
    assert _config([1, 0], correct_skipped=True, correct_skipped_power=0.5).strify().endswith("_WC_DC0.5")
    with pytest.raises(ValueError, match="correct_skipped_power=0.5 is invalid.*correct_skipped=True"):
        _config([1, 0], correct_skipped_power=0.5)
    with pytest.raises(ValueError, match="correct_skipped_power=-1 is invalid.*>= 0"):
        _config([1, 0], correct_skipped=True, correct_skipped_power=-1)
    with pytest.raises(ValueError, match="forecast_check=True is invalid.*skip_whole_call"):
        dcp.DBCacheConfig(skip_whole_call=True, steps_computation_mask=[1, 0], forecast_check=True)
    assert dcp.DBCacheConfig(skip_whole_call=True, steps_computation_mask=[1, 0]).strify().endswith("_WC")
    # the torch.compile backend sees only the graph: it cannot skip the call, and says what can
    with pytest.raises(Exception, match="skip_whole_call.*dcp.compile"):  # dynamo wraps it
        torch.compile(torch.nn.Linear(2, 2), backend="dit_cache", options={"cache_config": dcp.DBCacheConfig(
            skip_whole_call=True, steps_computation_mask=[1, 0])})(torch.randn(1, 2))


def test_observe_records_the_call_outputs_per_step(digits):
    model, info = digits
    labels = torch.arange(3)
    outs = []
    hook = model.register_forward_hook(lambda m, a, o: outs.append(o[0].clone()))
    try:
        with torch.no_grad():
            sample(model, labels, steps=5, seed=1, info=info)
    finally:
        hook.remove()
    trajs = planner.observe(model, lambda: (sample(model, labels, steps=5, seed=s, info=info) for s in (1,)),
                            whole_call=True)
    dcp.disable(model)
    assert set(trajs) == {WHOLE_CALL, "transformer_blocks+single_transformer_blocks"}
    traj = trajs[WHOLE_CALL]
    assert set(traj) == {GUIDE_STREAM, 0}
    assert all(torch.equal(a, b) for a, b in zip(traj[0], outs)) and len(traj[0]) == 5


def test_tune_on_flops_plans_whole_calls_and_reports_their_speedup():
    from dit_cachepass.tune import tune_digits

    report, _, _ = tune_digits(2.5, steps=12, metric="flops", policies=("dbcache", "planned"), seed=5)
    call = [c for c in report.candidates if c[0] == "planned call"]
    assert len(call) == 3 and all("_WC" in c[1] for c in call)
    tags = [c[1].split("+")[0] for c in call]  # the cache config's tag, then the calibrator's
    assert tags[0].endswith("_WC") and tags[1].endswith("_WC_DC") and tags[2].endswith("_WC_DC0.5")
    assert call[0][2] >= 2.5 - 1e-9  # verified: 12 steps, at most 4 computed
    # on this trained model the whole-call plan beats the DBCache threshold and the middle plan at 2.5x
    assert report.policy == "planned call" and report.config.skip_whole_call
    assert report.flops_speedup == pytest.approx(report.ideal_speedup)


def test_tune_refines_the_whole_call_plan_on_real_runs():
    from dit_cachepass.tune import tune_digits

    report, _, _ = tune_digits(2.0, steps=12, metric="flops", policies=("dbcache", "planned"), seed=5,
                               plan_evals=30)
    call = [c for c in report.candidates if c[0] == "planned call"]
    runs = [int(m[1]) for n in report.notes if (m := re.search(r"planned call refined on (\d+) real runs", n))]
    assert len(call) == 4 and len(runs) == 1 and 27 <= runs[0] <= 30
    *proposed, refined = call
    # the refinement started from the planner's masks with every filler (3 starts x 9 fillers in
    # 30 runs): never worse than the plan without, with and with the weighted correction
    assert refined[4] <= min(c[4] for c in proposed) + 1e-12 and refined[2] >= 2.0 - 1e-9
    with pytest.raises(ValueError, match="plan_evals"):
        tune_digits(2.0, steps=4, plan_evals=-1)


def test_tune_takes_a_base_config_that_already_skips_whole_calls(digits):
    """The base's own mask and skip are tune's to decide: it observes and proposes as from a plain base."""
    model, info = digits
    labels = torch.arange(4)
    base = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, skip_whole_call=True,
                             steps_computation_mask=[1, 1, 0, 1, 0, 1, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = dcp.tune(model, lambda: sample(model, labels, steps=8, seed=1, info=info), 1.5, base,
                          backend="eager", metric="flops", policies=("dbcache", "planned"))
    dcp.disable(model)
    assert {c[0] for c in report.candidates} >= {"dbcache", "planned call"}
    assert report.ideal_speedup >= 1.5 - 1e-9


@pytest.mark.parametrize("correct", [False, True], ids=["plain", "correct_skipped"])
def test_true_cfg_pipeline_forecasts_each_branch_and_a_second_generation_equals_a_fresh_one(correct):
    """diffusers' FluxPipeline with true CFG (random tiny weights; the mask decides, no threshold):
    the cond and uncond calls of a step each skip, each from its own outputs, and the next pipeline
    call starts from nothing (equal to a fresh pipeline's run of it alone): with ``correct_skipped``
    no forecast of the first call is left to correct the second."""
    from diffusers import FluxPipeline

    from test_state_pipelines import pipe_for, t2i, tiny_flux

    mask = [1, 1, 0, 1, 1, 0]  # ends on a skip: its forecast is still pending when the generation ends
    cfg = dict(steps_computation_mask=mask, skip_whole_call=True, max_warmup_steps=0, correct_skipped=correct)
    cal = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1)
    pipe = pipe_for(FluxPipeline, tiny_flux(), cached=False)
    dcp.enable_cache(pipe, dcp.DBCacheConfig(Fn_compute_blocks=1, **cfg), calibrator_config=cal, backend="eager")
    t2i(pipe, 1, 6)
    second = t2i(pipe, 2, 6)
    summary = dcp.summary(pipe.transformer)
    calls = {lp.name: lp.cached_steps for lp in summary.loops if lp.name.startswith(WHOLE_CALL)}
    assert calls == {WHOLE_CALL: [2, 5], f"{WHOLE_CALL} [uncond]": [2, 5]}
    assert summary.ideal_speedup == pytest.approx(6 / 4)
    fresh = pipe_for(FluxPipeline, tiny_flux(), cached=False)
    dcp.enable_cache(fresh, dcp.DBCacheConfig(Fn_compute_blocks=1, **cfg), calibrator_config=cal, backend="eager")
    torch.testing.assert_close(second, t2i(fresh, 2, 6), rtol=0, atol=0)
    uncached = t2i(pipe_for(FluxPipeline, tiny_flux(), cached=False), 2, 6)
    assert not torch.equal(second, uncached)  # the skipped steps did return forecasts
