"""TaylorSeer ladder update and forecast: Triton (interpreted) vs reference vs a Python
oracle, and the reference against cache-dit 1.5.3's TaylorSeerState itself."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_strategies import assert_close_dtype, assert_same_bits, cases, finite_scale

from dit_cachepass.kernels import taylorseer as ts

SETTINGS = settings(max_examples=20, deadline=None)


def _ladder(case, order: int, n_prev: int) -> list:
    return [case.make(10 + i) for i in range(n_prev)] + [None] * (order + 1 - n_prev)


def _oracle_update(y, prev, window, k):
    """Python float loops over .tolist(): D[i+1] = (D[i] - P[i]) / window."""
    d = [float(v) for v in y.double().flatten().tolist()]
    outs = []
    for i in range(k):
        p = prev[i].double().flatten().tolist()
        d = [(a - b) / window for a, b in zip(d, p)]
        outs.append(torch.tensor(d, dtype=torch.float64).reshape(y.shape).to(y.dtype))
    return outs


@SETTINGS
@given(
    case=cases(max_numel=600),
    order=st.integers(0, 3),
    n_prev=st.integers(0, 4),
    window=st.sampled_from([1.0, 2.0, 3.0, 0.5]),
    allow=st.booleans(),
)
def test_taylor_update_matches_reference(case, order, n_prev, window, allow):
    n_prev = min(n_prev, order + 1)
    y = case.make(0, special=True)
    prev = _ladder(case, order, n_prev)
    got = ts.taylor_update_triton(y, prev, window, order, allow, block_size=case.block)
    ref = ts.taylor_update_reference(y, prev, window, order, allow)
    k = min(order, n_prev) if allow else 0
    assert len(got) == len(ref) == order + 1
    assert [t is None for t in got] == [t is None for t in ref] == [False] * (k + 1) + [True] * (order - k)
    assert torch.equal(got[0].view(-1), y.reshape(-1)) or torch.isnan(y).any()
    scale = finite_scale(y, *[p for p in prev if p is not None])
    for i, (g, r) in enumerate(zip(got[1:k + 1], ref[1:k + 1]), start=1):
        assert g.shape == y.shape and g.dtype == y.dtype and g.is_contiguous()
        assert_close_dtype(g, r, case.dtype, scale / window**i, factor=1.0)
    # Reference vs the oracle: fp32 chain, rounded once per stored derivative.
    for i, (r, o) in enumerate(zip(ref[1:k + 1], _oracle_update(y, prev, window, k)), start=1):
        assert_close_dtype(r, o, case.dtype, 2**i * scale / window**i)
    again = ts.taylor_update_triton(y, prev, window, order, allow, block_size=case.block)
    for g, a in zip(got[1:k + 1], again[1:k + 1]):
        assert_same_bits(g, a)


@SETTINGS
@given(
    case=cases(max_numel=600),
    n_terms=st.integers(1, 5),
    distance=st.sampled_from([1.0, 2.0, 3.0, 0.5]),
    with_base=st.booleans(),
)
def test_taylor_predict_apply_matches_reference(case, n_terms, distance, with_base):
    derivs = [case.make(i, special=(i == n_terms - 1)) for i in range(n_terms)] + [None]
    base = case.make(20) if with_base else None
    got = ts.taylor_predict_apply_triton(derivs, distance, base, block_size=case.block)
    ref = ts.taylor_predict_apply_reference(derivs, distance, base)
    assert got.shape == derivs[0].shape and got.dtype == case.dtype and got.is_contiguous()
    scale = finite_scale(*derivs[:n_terms], *([base] if with_base else [])) * sum(
        distance**i / math.factorial(i) for i in range(n_terms)) + 1e-38
    assert_close_dtype(got, ref, case.dtype, scale, factor=1.0)
    # Oracle: float64 Python loop.
    flat = [d.double().flatten().tolist() for d in derivs[:n_terms]]
    b = base.double().flatten().tolist() if with_base else [0.0] * len(flat[0])
    expected = [
        b[j] + sum(flat[i][j] * distance**i / math.factorial(i) for i in range(n_terms)) for j in range(len(b))
    ]
    # Rounded once to the dtype, so overflow (fp16) becomes inf as in the reference.
    expected = torch.tensor(expected, dtype=torch.float64).reshape(got.shape).to(case.dtype)
    assert_close_dtype(ref, expected, case.dtype, scale)
    assert_same_bits(got, ts.taylor_predict_apply_triton(derivs, distance, base, block_size=case.block))


@pytest.fixture(scope="module")
def cache_dit_state_cls():
    mod = pytest.importorskip("cache_dit.caching.cache_contexts.calibrators.taylorseer")
    return mod.TaylorSeerState


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("n_derivatives,warmup,interval", [(1, 1, 1), (2, 2, 3), (3, 3, 2)])
def test_matches_cache_dit_taylorseer_state(cache_dit_state_cls, impl, n_derivatives, warmup, interval):
    """Drive cache-dit's own TaylorSeerState and ours through the same fp32 sequence."""
    update = getattr(ts, f"taylor_update_{impl}")
    predict = getattr(ts, f"taylor_predict_apply_{impl}")
    state = cache_dit_state_cls(n_derivatives=n_derivatives, max_warmup_steps=warmup,
                                skip_interval_steps=interval)
    g = torch.Generator().manual_seed(n_derivatives)
    cur: list = [None] * (n_derivatives + 1)
    last = -1
    approximated = 0
    for step in range(10):
        y = torch.randn(4, 9, generator=g) + step * 0.3
        out = state.step(y)
        if state.should_compute(step):
            cur = update(y, cur, float(step - last), n_derivatives, step > 1)
            last = step
            for ours, theirs in zip(cur, state.state["dY_current"]):
                assert (ours is None) == (theirs is None)
                if ours is not None:
                    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        else:
            approximated += 1
            torch.testing.assert_close(predict(cur, float(step - last)), out, rtol=1e-5, atol=1e-5)
    assert approximated > 0 or interval == 1


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_update_edge_cases(impl):
    update = getattr(ts, f"taylor_update_{impl}")
    y = torch.randn(3, 4)
    assert update(y, [], 2.0, 2, True) == [y, None, None]
    assert update(y, [torch.randn(3, 4), None], 1.0, 0, True) == [y]
    # A previous ladder of another shape counts as missing (cache-dit resets).
    out = update(y, [torch.randn(4, 3), torch.randn(4, 3)], 1.0, 2, True)
    assert out[0] is y and out[1:] == [None, None]
    with pytest.raises(ValueError, match="0 elements"):
        update(torch.empty(0), [None], 1.0, 1, True)
    with pytest.raises(ValueError, match="window"):
        update(y, [torch.randn(3, 4)], 0.0, 1, True)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_predict_edge_cases(impl):
    predict = getattr(ts, f"taylor_predict_apply_{impl}")
    with pytest.raises(ValueError, match="derivs\\[0\\]"):
        predict([None, None], 1.0)
    with pytest.raises(ValueError, match="0 elements"):
        predict([torch.empty(2, 0)], 1.0)
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        predict([torch.ones(3), torch.ones(4)], 1.0)
    with pytest.raises(ValueError, match=r"base.*\(2,\)"):
        predict([torch.ones(3)], 1.0, torch.ones(2))
    d0 = torch.randn(5)
    assert torch.equal(predict([d0, None, torch.randn(5)], 7.0), d0)  # stops at the first None


def test_triton_order_limit():
    y = torch.randn(8)
    prev = [torch.randn(8) for _ in range(ts.MAX_ORDER + 1)]
    with pytest.raises(ValueError, match="order"):
        ts.taylor_update_triton(y, prev, 1.0, ts.MAX_ORDER + 1, True)
    # The dispatcher falls back to the reference for such orders.
    assert len(ts.taylor_update_reference(y, prev, 1.0, ts.MAX_ORDER + 1, True)) == ts.MAX_ORDER + 2
