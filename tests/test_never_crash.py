"""An exception anywhere in the pass runs the model uncached with a warning naming the stage
(``strict=True`` raises ``UnsupportedModelError``): a bug in the pass never breaks a generation."""

import pytest
import torch

import dit_cachepass as dcp
import dit_cachepass.backend as backend
from dit_cachepass.compiler import lower
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5)


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def _target(stage):
    return {"capture": (backend, "capture"), "match": (backend, "match"), "plan": (backend, "plan"),
            "rewrite": (backend, "split"), "lower": (lower, "compile_graph")}[stage]


def twin():
    torch.manual_seed(0)
    a = ToyDiT().eval()
    torch.manual_seed(0)
    return a, ToyDiT().eval()


@pytest.mark.parametrize("stage", ["capture", "match", "plan", "rewrite", "lower"])
def test_a_failing_stage_runs_uncached_and_names_the_stage(stage, monkeypatch):
    ref, m = twin()
    monkeypatch.setattr(*_target(stage), _boom)
    # "lower" with aot_eager: the pieces' compilation fails, so each piece runs eagerly
    dcp.compile(m, dcp.DBCacheConfig(**CFG), backend="aot_eager" if stage == "lower" else "eager")
    with pytest.warns(UserWarning, match=f"the {stage} stage failed: RuntimeError: injected failure"):
        with torch.no_grad():
            out = m(**toy_inputs(0))
    with torch.no_grad():
        torch.testing.assert_close(out, ref(**toy_inputs(0)), rtol=0, atol=0)
        for s in range(1, 4):  # later steps keep working
            torch.testing.assert_close(m(**toy_inputs(s)), ref(**toy_inputs(s)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", ["capture", "match", "plan", "rewrite", "lower"])
def test_strict_raises_unsupported_model_error(stage, monkeypatch):
    _, m = twin()
    monkeypatch.setattr(*_target(stage), _boom)
    dcp.compile(m, dcp.DBCacheConfig(**CFG), backend="aot_eager" if stage == "lower" else "eager", strict=True)
    with pytest.raises(Exception) as err, torch.no_grad():
        m(**toy_inputs(0))
    chain, e = [], err.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or getattr(e, "inner_exception", None)
    assert any(isinstance(x, dcp.UnsupportedModelError) and f"the {stage} stage failed" in str(x) for x in chain)


def test_explain_reports_the_failing_stage(monkeypatch):
    _, m = twin()
    monkeypatch.setattr(backend, "match", _boom)
    rep = dcp.explain(m, **toy_inputs(0))
    assert not rep.loops and any("the match stage failed" in r for r in rep.reasons), str(rep)


def test_graphs_left_whole_compile_in_dynamos_context():
    """HiDream's MoE router (``bincount`` under scalar capture) makes a graph fragment with an
    unbacked size and no loop; it must compile as torch.compile would compile it, inside dynamo's
    ShapeEnv (a fresh one raised "u0 possible memo disaster" with every compiling backend)."""
    from dit_cachepass.tools import coverage
    from dit_cachepass.testing.zoo import ZOO

    row = coverage.check(ZOO["hidream"], backend="aot_eager")
    assert row.exact and row.cached, row
