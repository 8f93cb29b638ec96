"""apply_residuals: one launch for both streams, Triton (interpreted) vs reference vs oracle."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_strategies import assert_close_dtype, assert_same_bits, cases, finite_scale

from dit_cachepass.kernels import residual_apply as ra

SETTINGS = settings(max_examples=20, deadline=None)


def _oracle(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return (x.double() + r.double()).to(x.dtype)


@SETTINGS
@given(case=cases(max_numel=800), enc_case=cases(max_numel=300), with_encoder=st.booleans())
def test_apply_residuals_matches_reference(case, enc_case, with_encoder):
    h, hr = case.make(0, special=True), case.make(1)
    e = er = None
    if with_encoder:
        e, er = enc_case.make(0), enc_case.make(1, special=True)
    out_t = ra.apply_residuals_triton(h, hr, e, er, block_size=case.block)
    out_r = ra.apply_residuals_reference(h, hr, e, er)
    assert out_t[0].shape == h.shape and out_t[0].dtype == h.dtype and out_t[0].is_contiguous()
    assert_close_dtype(out_t[0], out_r[0], case.dtype, finite_scale(out_r[0]), factor=1.0)
    assert_close_dtype(out_r[0], _oracle(h, hr), case.dtype, finite_scale(out_r[0]), factor=1.0)
    if with_encoder:
        assert out_t[1].shape == e.shape and out_t[1].dtype == e.dtype and out_t[1].is_contiguous()
        assert_close_dtype(out_t[1], out_r[1], enc_case.dtype, finite_scale(out_r[1]), factor=1.0)
        assert_close_dtype(out_r[1], _oracle(e, er), enc_case.dtype, finite_scale(out_r[1]), factor=1.0)
    else:
        assert out_t[1] is None and out_r[1] is None
    again = ra.apply_residuals_triton(h, hr, e, er, block_size=case.block)
    assert_same_bits(out_t[0], again[0])
    if with_encoder:
        assert_same_bits(out_t[1], again[1])


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_inplace_updates_and_returns_the_bases(impl, contiguous):
    fn = getattr(ra, f"apply_residuals_{impl}")
    h = torch.randn(6, 10, dtype=torch.bfloat16)
    e = torch.randn(10, 3, dtype=torch.bfloat16)
    if not contiguous:
        h = h.t()
        e = e.t()
    hr, er = torch.randn_like(h), torch.randn_like(e)
    expected = (_oracle(h, hr), _oracle(e, er))
    h_out, e_out = fn(h, hr, e, er, inplace=True)
    assert h_out is h and e_out is e
    assert_same_bits(h, expected[0])
    assert_same_bits(e, expected[1])


def test_fp32_residual_keeps_base_dtype():
    h = torch.randn(33, dtype=torch.bfloat16)
    r = torch.randn(33, dtype=torch.float32)
    out_t, _ = ra.apply_residuals_triton(h, r, block_size=16)
    out_r, _ = ra.apply_residuals_reference(h, r)
    assert out_t.dtype == out_r.dtype == torch.bfloat16
    assert_same_bits(out_t, out_r)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_errors(impl):
    fn = getattr(ra, f"apply_residuals_{impl}")
    with pytest.raises(ValueError, match="0 elements"):
        fn(torch.empty(0, 3), torch.empty(0, 3))
    with pytest.raises(ValueError, match="0 elements"):
        fn(torch.ones(2), torch.ones(2), torch.empty(0), torch.empty(0))
    with pytest.raises(ValueError, match=r"hidden.*\(2, 3\).*hidden_residual.*\(1, 3\)"):
        fn(torch.ones(2, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"encoder.*\(4,\).*encoder_residual.*\(2, 2\)"):
        fn(torch.ones(2), torch.ones(2), torch.ones(4), torch.ones(2, 2))
    with pytest.raises(ValueError, match="together"):
        fn(torch.ones(2), torch.ones(2), torch.ones(4), None)
