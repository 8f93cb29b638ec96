"""``forecast_check``: DBCache's diff taken against the calibrator's forecast of the Fn residual
(a checked forecast) instead of the last computed one."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.runtime.state import GUIDE_STREAM, LoopState

pytest.importorskip("diffusers")
from dit_cachepass.demo_model import load_digits_dit, sample  # noqa: E402

STEPS = 14
LABELS = torch.arange(10)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One thread: see conftest.one_thread."""


def _state(order=1):
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, forecast_check=True)
    return LoopState("loop", cfg, dcp.TaylorSeerCalibratorConfig(taylorseer_order=order))


def test_reference_is_the_calibrators_forecast_of_the_fn_residual():
    st = _state()
    stored = torch.zeros(2, 3)
    st.step = 4
    assert st.forecast_reference(stored) is None, "no computed step followed the Fn residual yet: compute"
    for step in range(4):  # a straight line: TaylorSeer order 1 extrapolates it exactly from step 3 on
        st.calibrator.update(GUIDE_STREAM, torch.full((2, 3), 2.0 * step), step)
    st.step = 5
    torch.testing.assert_close(st.forecast_reference(stored), torch.full((2, 3), 10.0))
    assert st.forecast_reference(torch.zeros(3, 3)) is None, "another layout than the stored step's: compute"
    # forecasting for the decision leaves the calibrator as it was (FoCa rolls its window on forecast)
    torch.testing.assert_close(st.forecast_reference(stored), torch.full((2, 3), 10.0))


def test_foca_decision_forecast_does_not_roll_its_window():
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, forecast_check=True)
    st = LoopState("loop", cfg, dcp.FoCaCalibratorConfig())
    for step in range(3):
        st.calibrator.update(GUIDE_STREAM, torch.full((4,), float(step * step)), step)
    before = [t.clone() if t is not None else None for t in st.calibrator.state[GUIDE_STREAM][:4]]
    st.step = 4
    st.forecast_reference(torch.zeros(4))
    after = st.calibrator.state[GUIDE_STREAM][:4]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before, after))


def test_config_field_is_checked_and_tagged():
    assert dcp.DBCacheConfig(forecast_check=True).strify().endswith("_FC")
    assert not dcp.DBCacheConfig().strify().endswith("_FC")
    with pytest.raises(TypeError, match="forecast_check"):
        dcp.DBCacheConfig(forecast_check="yes")


def _run(cfg, cal=None):
    model, info = load_digits_dit()
    dcp.compile(model, cfg, calibrator_config=cal, backend="eager")
    with dcp.generation(model):
        out = sample(model, LABELS, steps=STEPS, seed=3, info=info)
    return out, dcp.summary(model).loops[0], model


def test_without_calibrator_it_is_plain_dbcache():
    base = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.25, max_warmup_steps=2)
    out_a, loop_a, _ = _run(dcp.DBCacheConfig(**base))
    out_b, loop_b, _ = _run(dcp.DBCacheConfig(**base, forecast_check=True))
    assert loop_a.cached_steps and loop_a.cached_steps == loop_b.cached_steps
    assert torch.equal(out_a, out_b)


def test_with_taylorseer_it_decides_on_the_forecast_error():
    """The diffs recorded are the Fn residual's distance to TaylorSeer's forecast of it: smaller than
    DBCache's step-to-step diffs on a trained model, so the same threshold caches more."""
    base = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.1, max_warmup_steps=2)
    cal = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1)
    model, info = load_digits_dit()
    ref = sample(model, LABELS, steps=STEPS, seed=3, info=info)
    out_p, plain, _ = _run(dcp.DBCacheConfig(**base), cal)
    out_c, checked, model = _run(dcp.DBCacheConfig(**base, forecast_check=True), cal)
    assert len(checked.cached_steps) > len(plain.cached_steps)
    state = next(iter(dcp.api._session(model).states.values()))
    for r in state.records:
        if r.cached:
            assert r.diff is not None and r.diff < 0.1
    psnr = 10 * torch.log10(1 / ((out_c - ref) ** 2).mean())
    assert torch.isfinite(out_c).all() and psnr > 35, f"checked forecast output drifted: {psnr:.1f} dB"
