"""The DMD calibrator: against cache-dit 1.5.3's own DMDState on plain tensors, its config, its
state under LoopState.snapshot/restore, and one run of the shipped digits model."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.runtime import dmd as dmd_mod
from dit_cachepass.runtime.calibrators import make_calibrator
from dit_cachepass.runtime.dmd import DMDCalibrator

cd_dmd = pytest.importorskip("cache_dit.caching.cache_contexts.calibrators.dmd")
cd_taylor = pytest.importorskip("cache_dit.caching.cache_contexts.calibrators.taylorseer")
cd_cal = pytest.importorskip("cache_dit.caching.cache_contexts.calibrators")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One thread: see conftest.one_thread."""


def traj(step: int, shape=(2, 16), dtype=torch.float64) -> torch.Tensor:
    """Smooth and non-linear in the step: per batch item a damped, drifting sine plus a quadratic."""
    n_items = shape[0] if len(shape) > 1 else 1
    t = torch.linspace(0, 1, torch.Size(shape).numel() // n_items, dtype=torch.float64)
    items = [torch.sin(t * (1 + 0.3 * step) + i) * 0.95 ** step + 0.02 * step ** 2 * (i + 1)
             for i in range(n_items)]
    return torch.stack(items).reshape(shape).to(dtype)


# Tolerance, relative to the forecast's largest magnitude. float64: we multiply the snapshot
# matrices in another order (X' V once, then U* (X' V)) than cache-dit ((U* X') V), so the two
# fits differ by rounding (~1e-16) that eig/lstsq amplify by the window's conditioning (measured
# <= 1.1e-14); 1e-10 leaves room. Other dtypes: both fit in float64 and cast, so that float64
# difference can flip at most the last bit of the cast: one ulp, i.e. the dtype's eps.
def assert_matches(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    tol = 1e-10 if ref.dtype == torch.float64 else torch.finfo(ref.dtype).eps
    err = (ours.double() - ref.double()).abs().max()
    assert err <= tol * ref.double().abs().max(), f"max error {err:.3g}"


def run_both(computed, steps=14, dtype=torch.float64, shape=(2, 16), value=traj, **cfg):
    """Feed the same computed steps to ours and to cache-dit; compare every forecast.

    The reference is cache-dit's DMDState wherever its DMD forecast engages (>= 4 evenly spaced
    snapshots), else cache-dit's TaylorSeerState of order 1: that is what DMD's warm-up fallback
    is meant to be (see test_cache_dit_dmd_fallback_slope_spans_three_updates). Like cache-dit's
    contexts, a state is created by its first update and only then counts steps."""
    config = dcp.DMDCalibratorConfig(**cfg)
    ours = DMDCalibrator(config)
    ref = cd_dmd.DMDState(history=config.dmd_history, rank=config.dmd_rank, ridge=config.dmd_ridge,
                          svd_precision=config.dmd_svd_precision)
    taylor = cd_taylor.TaylorSeerState(n_derivatives=1)
    engaged, started = [], False
    for step in range(steps):
        if started:
            ref.mark_step_begin()
            taylor.mark_step_begin()
        shp = shape(step) if callable(shape) else shape
        if step in computed:
            y = value(step, shp, dtype)
            ours.update(0, y, step)
            ref.update(y)
            taylor.update(y)
            started = True
        else:
            uses_dmd = len(ref._uniform_tail()[0]) >= 4
            expected = ref.approximate() if uses_dmd else taylor.approximate()
            assert_matches(ours.forecast(0, step, None), expected)
            base = torch.ones(shp, dtype=dtype)
            assert_matches(ours.forecast(0, step, base), expected + base)
            engaged.append(uses_dmd)
    return engaged


SCHEDULES = [
    {0, 1, 2, 3, 4, 5, 6, 7, 8},               # gap 1, window fills past dmd_history
    {0, 2, 4, 6, 8, 10},                       # spacing 2: half-step horizons (k = 0.5, 1.5)
    {0, 1, 2, 3, 6, 9, 12},                    # spacing 3 after warm-up: k = 1/3, 2/3
    {0, 1, 2, 3, 4, 6, 7, 8, 11},              # spacing changes: the even run restarts
    {0, 1, 2, 3, 4, 5, 6, 8, 10, 12},          # 1 -> 2 spacing, longer gaps at the end
]


@pytest.mark.parametrize("computed", SCHEDULES)
@pytest.mark.parametrize("cfg", [{}, {"dmd_rank": 1}, {"dmd_rank": 2}, {"dmd_history": 4}, {"dmd_history": 8},
                                 {"dmd_history": 3}, {"dmd_ridge": 1e-3}, {"dmd_svd_precision": "low"},
                                 {"dmd_svd_precision": "high"}])
def test_matches_cache_dit_float64(computed, cfg):
    engaged = run_both(computed, **cfg)
    if cfg.get("dmd_history", 6) < 4:
        assert not any(engaged)  # a window of 3 never reaches the 4-snapshot floor: Taylor only


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("computed", SCHEDULES[:3])
def test_matches_cache_dit_low_precision(dtype, computed):
    assert any(run_both(computed, dtype=dtype))


@pytest.mark.parametrize("shape", [(32,), (2, 4, 8), (3, 1, 5)])
def test_matches_cache_dit_other_shapes(shape):
    assert any(run_both({0, 1, 2, 3, 4, 5, 7, 9}, shape=shape))


def test_shape_change_starts_over_like_cache_dit():
    shape = lambda step: (2, 16) if step < 7 else (2, 8)  # noqa: E731
    engaged = run_both({0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14, 16}, steps=18, shape=shape)
    assert engaged == [True, False, True, False]  # steps 6, 10 (history restarted at 7), 15, 17


def test_fp16_overflow_falls_back_to_the_newest_value_like_cache_dit():
    """A forecast that is finite in float64 but overflows float16 reuses the newest snapshot."""
    grow = lambda step, shape, dtype: (torch.full(shape, 9000.0, dtype=torch.float64) * 1.6 ** step  # noqa: E731
                                       + torch.linspace(0, 1, shape[-1])).to(dtype)
    run_both({0, 1, 2, 3}, steps=6, dtype=torch.float16, value=grow)
    cal = DMDCalibrator(dcp.DMDCalibratorConfig())
    for s in range(4):
        cal.update(0, grow(s, (2, 16), torch.float16), s)
    assert torch.equal(cal.forecast(0, 5, None), grow(3, (2, 16), torch.float16))


def test_batch_items_are_fitted_independently():
    cal, one = DMDCalibrator(dcp.DMDCalibratorConfig()), DMDCalibrator(dcp.DMDCalibratorConfig())
    for s in range(5):
        cal.update(0, traj(s, (3, 16)), s)
        one.update(0, traj(s, (3, 16))[1:2], s)
    assert torch.allclose(cal.forecast(0, 6, None)[1:2], one.forecast(0, 6, None), rtol=0, atol=1e-12)


def test_cache_dit_dmd_fallback_slope_spans_three_updates():
    """Pins the cache-dit 1.5.3 quirk we do not copy (docs/differences_from_cache_dit.md): its DMD
    warm-up ladder takes the slope from the snapshot TWO updates back over the latest gap only."""
    ref, taylor = cd_dmd.DMDState(history=3), cd_taylor.TaylorSeerState(n_derivatives=1)
    ys = {s: torch.tensor([float(s * s)]) for s in (0, 1, 2, 3)}
    for s in range(5):
        if s:
            ref.mark_step_begin()
            taylor.mark_step_begin()
        if s in ys:
            ref.update(ys[s])
            taylor.update(ys[s])
    # a window of 3: always the fallback. TaylorSeer: 9 + (9 - 4) = 14; cache-dit's DMD: 9 + (9 - 1) = 17
    assert float(taylor.approximate()) == 14.0 and float(ref.approximate()) == 17.0
    cal = DMDCalibrator(dcp.DMDCalibratorConfig(dmd_history=3))
    for s in ys:
        cal.update(0, ys[s], s)
    assert float(cal.forecast(0, 4, None)) == 14.0


def test_fit_once_per_window_and_snapshot_restore():
    from dit_cachepass.runtime.state import LoopState

    loop = LoopState("loop", dcp.DBCacheConfig(), calibrator_config=dcp.DMDCalibratorConfig())
    cal = loop.calibrator
    assert isinstance(cal, DMDCalibrator)
    for s in range(5):
        cal.update(0, traj(s), s)
    before = cal.forecast(0, 5, None)
    snap = loop.snapshot()
    calls = []
    orig = dmd_mod._fit
    try:
        dmd_mod._fit = lambda run, config: calls.append(len(run)) or orig(run, config)
        cal.forecast(0, 6, None)
        cal.update(0, traj(7), 7)  # a call that then raises: restore must undo all of this
        cal.update(0, traj(8, (2, 8)), 8)
        assert calls == []  # the window's fit was made by the first forecast and reused
    finally:
        dmd_mod._fit = orig
    loop.restore(snap)
    assert loop.calibrator.snaps[0][-1][0] == 4 and len(loop.calibrator.snaps[0]) == 5
    assert torch.equal(loop.calibrator.forecast(0, 5, None), before)


def test_config_defaults_tag_and_factory_match_cache_dit():
    theirs = cd_cal.DMDCalibratorConfig
    for kw in [{}, {"dmd_history": 5}, {"dmd_svd_precision": "low"}, {"dmd_svd_precision": "high", "dmd_history": 4}]:
        ours = dcp.DMDCalibratorConfig(**kw)
        assert ours.strify() == theirs(**kw).strify()
    ours, ref = dcp.DMDCalibratorConfig(), theirs()
    for name in ("dmd_history", "dmd_rank", "dmd_ridge", "dmd_svd_precision", "enable_calibrator",
                 "enable_encoder_calibrator", "calibrator_type", "calibrator_cache_type"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert isinstance(make_calibrator(ours), DMDCalibrator)
    assert "DMDCalibratorConfig" in dcp.__all__


@pytest.mark.parametrize("kw, err, match", [
    ({"dmd_history": 0}, ValueError, r"DMDCalibratorConfig\.dmd_history=0 is invalid"),
    ({"dmd_history": 6.0}, TypeError, r"DMDCalibratorConfig\.dmd_history=6\.0"),
    ({"dmd_rank": -1}, ValueError, r"DMDCalibratorConfig\.dmd_rank=-1"),
    ({"dmd_rank": True}, TypeError, r"DMDCalibratorConfig\.dmd_rank=True"),
    ({"dmd_ridge": -1e-8}, ValueError, r"DMDCalibratorConfig\.dmd_ridge=-1e-08"),
    ({"dmd_ridge": float("inf")}, ValueError, r"DMDCalibratorConfig\.dmd_ridge=inf"),
    ({"dmd_ridge": "1e-8"}, TypeError, r"DMDCalibratorConfig\.dmd_ridge='1e-8'"),
    ({"dmd_svd_precision": "fast"}, ValueError, r"DMDCalibratorConfig\.dmd_svd_precision='fast'.*'low'"),
    ({"dmd_svd_precision": None}, TypeError, r"DMDCalibratorConfig\.dmd_svd_precision=None"),
    ({"history": 6}, TypeError, r"did you mean 'dmd_history'"),
    ({"enable_calibrator": "yes"}, TypeError, r"DMDCalibratorConfig\.enable_calibrator='yes'"),
])
def test_config_validation_names_the_field(kw, err, match):
    with pytest.raises(err, match=match):
        dcp.DMDCalibratorConfig(**kw)


def test_config_revalidated_after_assignment():
    cfg = dcp.DMDCalibratorConfig()
    cfg.dmd_rank = -2
    with pytest.raises(ValueError, match=r"DMDCalibratorConfig\.dmd_rank=-2"):
        cfg.validate()
    with pytest.raises(TypeError, match="DMDCalibratorConfig"):
        dcp.ParamsModifier(calibrator_config=dcp.DBCacheConfig())


# --- end to end: the shipped digits model ---------------------------------------------------

def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:  # images in [0, 1]
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("diffusers")
    pytest.importorskip("safetensors")
    from dit_cachepass import demo_model as dm
    if not dm.WEIGHTS_PATH.exists():
        pytest.skip("digits_dit.safetensors not shipped")
    model, info = dm.load_digits_dit()
    labels = torch.arange(10)
    return dm, info, labels, dm.sample(model, labels, steps=20, seed=0, info=info)


def _cached_run(digits, calibrator, **extra):
    dm, info, labels, _ = digits
    model, _ = dm.load_digits_dit()
    dcp.compile(model, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.3,
                                         max_warmup_steps=3, **extra),
                calibrator_config=calibrator, backend="eager")
    out = dm.sample(model, labels, steps=20, seed=0, info=info)
    return out, dcp.summary(model).cached_steps


def test_digits_end_to_end(digits):
    """Measured: 11 of 20 steps cached, 39.6 dB. This dynamic schedule (spacings 4, 4, 3, 3, 2,
    1) never gives 4 evenly spaced computed steps, so DMD runs as its Taylor fallback here."""
    out, cached = _cached_run(digits, dcp.DMDCalibratorConfig())
    assert len(cached) >= 6
    assert torch.isfinite(out).all()
    assert _psnr(out, digits[3]) > 35.0


def test_digits_end_to_end_with_dmd_engaged(digits):
    """max_continuous_cached_steps=1 computes every other step, so the DMD fit engages (5 windows).
    Measured: 49.3 dB with DMD vs 40.1 dB reusing the residual unchanged (TaylorSeer: 48.3 dB)."""
    fits, orig = [], dmd_mod._fit
    dmd_mod._fit = lambda run, config: fits.append(len(run)) or orig(run, config)
    try:
        out, cached = _cached_run(digits, dcp.DMDCalibratorConfig(), max_continuous_cached_steps=1)
    finally:
        dmd_mod._fit = orig
    plain, plain_cached = _cached_run(digits, None, max_continuous_cached_steps=1)
    assert cached == plain_cached and len(cached) >= 6
    assert len(fits) >= 3 and max(fits) == 6  # the window fills to dmd_history
    assert torch.isfinite(out).all()
    assert _psnr(out, digits[3]) > 45.0
    assert _psnr(out, digits[3]) > _psnr(plain, digits[3]) + 5.0
