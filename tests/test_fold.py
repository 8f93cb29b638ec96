"""fold: the Fn residual, its sum and the middle's residuals are computed inside the pieces, and
change no decision, diff or output compared with the eager computation they replace."""

import pytest
import torch

import dit_cachepass as dcp
import dit_cachepass.backend as backend
from dit_cachepass.runtime.session import Session
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


def _generation(cfg_branches: int):
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), dcp.DBCacheConfig(**CFG), backend="eager")
    outs = []
    with torch.no_grad():
        for s in range(8):
            for br in range(cfg_branches):
                x = toy_inputs(s)
                if br:  # the uncond branch sees other conditioning
                    x["hidden_states"] = x["hidden_states"] * 0.5 + 0.3
                outs.append(m(**x))
    return m, outs


@pytest.mark.parametrize("cfg_branches", [1, 2])
def test_the_fn_piece_computes_the_diff_numerator(monkeypatch, cfg_branches):
    """The runner feeds the Fn piece the reference it expects (alternating under CFG), so no
    decision needs a separate diff op: torch.dist, the fallback, is never called."""
    calls = []
    dist = torch.dist
    monkeypatch.setattr(torch, "dist", lambda *a, **k: calls.append(1) or dist(*a, **k))
    m, _ = _generation(cfg_branches)
    loops = dcp.summary(m).loops
    assert len(loops) == cfg_branches
    assert all(sum(r.diff is not None for r in lp.steps) >= 5 for lp in loops)
    assert not calls


def test_a_wrong_expected_reference_only_costs_the_fallback(monkeypatch):
    """The numerator is used only when the fed tensor is the state's reference: a wrong guess
    (here: always zeros) changes no decision, diff or output."""
    m, outs = _generation(2)
    monkeypatch.setattr(Session, "expected_reference", lambda self, name, like: torch.zeros(
        like.shape if isinstance(like, torch.Tensor) else like[0]))
    ref_m, ref_outs = _generation(2)
    for la, lb in zip(dcp.summary(m).loops, dcp.summary(ref_m).loops):
        assert [(r.cached, r.reason) for r in la.steps] == [(r.cached, r.reason) for r in lb.steps]
        for ra, rb in zip(la.steps, lb.steps):
            assert (ra.diff is None) == (rb.diff is None)
            assert ra.diff is None or ra.diff == pytest.approx(rb.diff, rel=1e-5)
    assert any(r.cached for lp in dcp.summary(m).loops for r in lp.steps)
    for x, y in zip(outs, ref_outs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
