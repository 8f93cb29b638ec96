"""Calibrators on plain tensors, against cache-dit 1.5.3's own state classes."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.runtime.calibrators import FoCaCalibrator, TaylorSeerCalibrator

foca_mod = pytest.importorskip("cache_dit.caching.cache_contexts.calibrators.foca")


def f(step: int) -> torch.Tensor:  # a smooth, non-linear trajectory
    t = torch.linspace(0, 1, 8, dtype=torch.float64)
    return torch.sin(t * (1 + 0.3 * step)) + 0.05 * step ** 2


@pytest.mark.parametrize("computed", [{0, 1, 2, 3, 8}, {0, 2, 3, 4, 9, 10}, {0, 1, 5, 6, 7}])
def test_foca_matches_cache_dit_state_including_damped_long_gaps(computed):
    ours = FoCaCalibrator(dcp.FoCaCalibratorConfig())
    ref = foca_mod.FoCaState()
    for step in range(12):
        ref.mark_step_begin()
        if step in computed:
            ours.update(0, f(step), step)
            ref.update(f(step))
        else:
            torch.testing.assert_close(ours.forecast(0, step, None), ref.approximate(), rtol=1e-12, atol=1e-12)


def test_taylorseer_worked_example_from_the_spec():
    """Order 2, f(t)=t^2 computed at {0,1,2,3,5,8}: forecasts 14 (step 4), 33.75 (6), 44 (7)."""
    cal = TaylorSeerCalibrator(dcp.TaylorSeerCalibratorConfig(taylorseer_order=2))
    got = {}
    for step in range(8):
        if step in {0, 1, 2, 3, 5}:
            cal.update(0, torch.tensor([float(step ** 2)]), step)
        else:
            got[step] = float(cal.forecast(0, step, None))
    assert got == {4: 14.0, 6: 33.75, 7: 44.0}
