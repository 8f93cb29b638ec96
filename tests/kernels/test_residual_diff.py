"""fused_residual_diff / rel_l1_diff: Triton (interpreted) vs reference vs a float64 oracle."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from kernel_strategies import assert_close_dtype, assert_same_bits, cases, finite_scale, ratio_policy

from dit_cachepass.kernels import residual_diff as rd

SETTINGS = settings(max_examples=20, deadline=None)


def _oracle_ratio(cur: torch.Tensor, prev: torch.Tensor) -> float:
    c = cur.double().numpy().ravel()
    p = prev.double().numpy().ravel()
    with np.errstate(all="ignore"):
        return ratio_policy(float(np.abs(c - p).sum()), float(np.abs(p).sum()))


def _assert_ratio(actual: torch.Tensor, expected: float, rtol: float = 1e-4) -> None:
    assert actual.shape == () and actual.dtype == torch.float32
    a = float(actual)
    if math.isnan(expected):
        assert math.isnan(a), a
    elif math.isinf(expected):
        assert a == expected, a
    else:
        # The ratio is computed in fp32: it can only be as close as fp32 allows.
        assert a == pytest.approx(expected, rel=rtol, abs=1e-30), (a, expected)


@SETTINGS
@given(case=cases())
def test_fused_residual_diff_matches_reference(case):
    fn_out, fn_in, prev = case.make(0, special=True), case.make(1), case.make(2)
    res_t, ratio_t = rd.fused_residual_diff_triton(fn_out, fn_in, prev, block_size=case.block, reduce_block=4)
    res_r, ratio_r = rd.fused_residual_diff_reference(fn_out, fn_in, prev)

    assert res_t.shape == fn_out.shape and res_t.dtype == fn_out.dtype and res_t.is_contiguous()
    assert_close_dtype(res_t, res_r, case.dtype, finite_scale(res_r), factor=1.0)
    _assert_ratio(ratio_t, float(ratio_r))

    # Reference against the float64 oracle (residual rounded once to the dtype).
    expected_res = (fn_out.double() - fn_in.double()).to(case.dtype)
    assert_close_dtype(res_r, expected_res, case.dtype, finite_scale(expected_res), factor=1.0)
    _assert_ratio(ratio_r, _oracle_ratio(res_r, prev))

    # Determinism: same inputs, same bits (residual and ratio).
    res_t2, ratio_t2 = rd.fused_residual_diff_triton(fn_out, fn_in, prev, block_size=case.block, reduce_block=4)
    assert_same_bits(res_t, res_t2)
    assert_same_bits(ratio_t, ratio_t2)


@SETTINGS
@given(case=cases())
def test_rel_l1_diff_matches_reference(case):
    cur, prev = case.make(0, special=True), case.make(1)
    got = rd.rel_l1_diff_triton(cur, prev, block_size=case.block, reduce_block=2)
    ref = rd.rel_l1_diff_reference(cur, prev)
    _assert_ratio(got, float(ref))
    _assert_ratio(ref, _oracle_ratio(cur, prev))
    assert_same_bits(got, rd.rel_l1_diff_triton(cur, prev, block_size=case.block, reduce_block=2))


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_prev_none_gives_inf_and_residual(impl):
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    fn = getattr(rd, f"fused_residual_diff_{impl}")
    res, ratio = fn(a, b, None)
    torch.testing.assert_close(res, a - b)
    assert ratio.shape == () and ratio.dtype == torch.float32 and float(ratio) == math.inf


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_denominator_policy(impl, dtype):
    fn = getattr(rd, f"rel_l1_diff_{impl}")
    z = torch.zeros(70, dtype=dtype)
    assert float(fn(z, z)) == math.inf  # 0/0: nothing to compare against -> compute
    assert float(fn(z + 1, z)) == math.inf
    assert float(fn(z, z + 2)) == 1.0
    x = z + 1
    x[17] = float("nan")
    assert math.isnan(float(fn(x, z)))  # NaN beats the zero-denominator rule
    assert math.isnan(float(fn(z + 1, x)))
    x[17] = float("inf")
    assert math.isnan(float(fn(x, z + 1)))


def test_many_partials_fixed_order_determinism():
    # 5000 elements / 16 per program = 313 partials, reduced 8 at a time by stage 2.
    g = torch.Generator().manual_seed(0)
    a, b, p = (torch.randn(5000, generator=g, dtype=torch.float32) for _ in range(3))
    outs = [rd.fused_residual_diff_triton(a, b, p, block_size=16, reduce_block=8) for _ in range(3)]
    for res, ratio in outs[1:]:
        assert_same_bits(res, outs[0][0])
        assert_same_bits(ratio, outs[0][1])
    _assert_ratio(outs[0][1], _oracle_ratio(a - b, p), rtol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_errors(impl):
    fused = getattr(rd, f"fused_residual_diff_{impl}")
    rel = getattr(rd, f"rel_l1_diff_{impl}")
    e = torch.empty(0, 4)
    with pytest.raises(ValueError, match="0 elements"):
        fused(e, e, e)
    with pytest.raises(ValueError, match="0 elements"):
        rel(e, e)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        fused(torch.ones(2, 3), torch.ones(3, 2), None)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(6,\)"):
        rel(torch.ones(2, 3), torch.ones(6))
