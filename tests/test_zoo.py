"""The tiny-model zoo: every entry builds, runs, and returns a sample of the documented shape."""

import pytest
import torch

from dit_cachepass.testing.zoo import ZOO, first_block_residual_diffs, get


def _sample(out):
    if isinstance(out, torch.Tensor):  # Kandinsky5 returns the bare sample even with return_dict=False
        return out
    return out[0] if isinstance(out, (tuple, list)) else out.sample


@pytest.mark.parametrize("name", sorted(ZOO))
def test_entry_builds_and_runs(name):
    e = get(name)
    m = e.build()
    assert not m.training and next(m.parameters()).dtype == torch.float32
    for lst in e.block_lists:
        assert len(getattr(m, lst)) >= 4, lst
    assert set(e.cache_dit_pattern) == set(e.block_lists)
    x = e.inputs(1, 10, 1.0)
    with torch.no_grad():
        out = _sample(m(**x, return_dict=False))
    assert tuple(out.shape) == e.expected_output_shape()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_inputs_are_reproducible_and_move_with_the_step(name):
    e = get(name)
    a, b, c = e.inputs(2, 10, 1.0), e.inputs(2, 10, 1.0), e.inputs(3, 10, 1.0)
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k
    assert not torch.equal(a["hidden_states"], c["hidden_states"])
    key = "timestep" if "timestep" in a else "timesteps"  # HiDream
    t2, t3 = a[key].flatten()[0].item(), c[key].flatten()[0].item()
    assert (t3 < t2) if e.timestep_decreasing else (t3 > t2)


def test_residual_drift_is_in_the_tuned_range():
    e = get("flux")
    diffs = first_block_residual_diffs(e, num_steps=10)
    assert all(0.02 < d < 0.25 for d in diffs), diffs
