"""fold: the Fn residual, its sum and the middle's residuals are computed inside the pieces, and
change no decision, diff or output compared with the eager computation they replace."""

import pytest
import torch

import dit_cachepass as dcp
import dit_cachepass.backend as backend
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1)


def _run(monkeypatch, folded: bool, glue: str = "none", steps=range(8), poison_step=None, **cfg):
    if not folded:
        monkeypatch.setattr(backend, "fold", lambda prog: prog)
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT(glue=glue).eval(), dcp.DBCacheConfig(**{**CFG, **cfg}), backend="eager")
    outs = []
    with torch.no_grad():
        for s in steps:
            x = toy_inputs(s)
            if s == poison_step:
                x["hidden_states"][0, 0, 0] = float("nan")
            outs.append(m(**x))
    monkeypatch.undo()
    return m, outs


def _pieces(m):
    return [p for r in m._dit_cachepass.runners for p in r.prog.pieces]


@pytest.mark.parametrize("glue", ["none", "control"])
def test_folded_pieces_match_the_eager_cache_work(monkeypatch, glue):
    m, outs = _run(monkeypatch, True, glue)
    ref_m, ref_outs = _run(monkeypatch, False, glue)
    spec = next(p.spec for p in _pieces(m) if p.kind == "middle")
    assert spec.measured is not None and spec.residuals and spec.residual_poison is not None
    assert next(p.spec for p in _pieces(ref_m) if p.kind == "middle").measured is None
    a, b = dcp.summary(m).loops[0].steps, dcp.summary(ref_m).loops[0].steps
    assert [(r.cached, r.reason) for r in a] == [(r.cached, r.reason) for r in b]
    assert any(r.cached for r in a), "the toy inputs vary slowly: some steps must cache"
    for ra, rb in zip(a, b):
        assert (ra.diff is None) == (rb.diff is None)
        if ra.diff is not None:
            assert ra.diff == pytest.approx(rb.diff, rel=1e-5)
    for x, y in zip(outs, ref_outs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    buf = next(iter(m._dit_cachepass.states.values())).buffers[None]
    assert buf.den is not None and float(buf.den[1]) == 0
    assert float(buf.den[0]) == pytest.approx(float(buf.reference.abs().sum()), rel=1e-5)


def test_a_non_finite_folded_step_is_dropped_when_the_next_diff_reads_it(monkeypatch):
    """The folded path keeps a step's values without a sync; the next diff finds them non-finite,
    drops them and computes, exactly as the eager path that refused to store them."""
    with pytest.warns(UserWarning, match="non-finite"):
        m, outs = _run(monkeypatch, True, poison_step=2, residual_diff_threshold=1.0)
    ref_m, ref_outs = _run(monkeypatch, False, poison_step=2, residual_diff_threshold=1.0)
    reasons = [r.reason for r in dcp.summary(m).loops[0].steps]
    assert reasons[2:4] == ["non-finite-diff", "no-reference"]  # step 2's own diff is NaN too
    assert reasons == [r.reason for r in dcp.summary(ref_m).loops[0].steps]
    assert all(torch.isfinite(o).all() for o in outs[3:])
    for x, y in zip(outs[3:], ref_outs[3:]):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
