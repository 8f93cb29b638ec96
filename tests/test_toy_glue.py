"""Glue inside the loop stays in the middle piece; the rewrite never changes results."""

import warnings

import pytest
import torch

import dit_cachepass as dcp
from toy_models import NoLoop, ToyDiT, toy_inputs


def run(model, steps, **kw):
    with torch.no_grad():
        return [model(**toy_inputs(s, **kw)) for s in steps]


def twin(**kw):
    torch.manual_seed(0)
    a = ToyDiT(**kw).eval()
    torch.manual_seed(0)
    return a, ToyDiT(**kw).eval()


@pytest.mark.parametrize("glue", ["none", "control", "perceiver", "skip", "skip_arg"])
def test_threshold_zero_is_exact(glue):
    ref, m = twin(glue=glue)
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.0), backend="eager")
    for a, b in zip(run(ref, range(4)), run(m, range(4))):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("glue", ["control", "perceiver"])
def test_glue_inside_loop_is_part_of_the_middle(glue):
    _, m = twin(glue=glue)
    rep = dcp.explain(m, **toy_inputs(0), cache_config=dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1))
    assert [l.name for l in rep.loops] == ["blocks"], str(rep)
    assert rep.loops[0].middle_blocks == [f"blocks.{i}" for i in range(1, 5)]
    if glue == "perceiver":
        assert any("perceiver" in n for n in rep.notes), str(rep)
    # cached steps are taken and the output stays finite and close to the uncached model
    ref, m = twin(glue=glue)
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5,
                                     max_warmup_steps=1), backend="eager")
    outs, refs = run(m, range(5)), run(ref, range(5))
    assert dcp.summary(m).cached_steps, str(dcp.summary(m))
    for a, b in zip(refs, outs):
        assert torch.isfinite(b).all()
        assert (a - b).abs().mean() / a.abs().mean() < 0.1
    # the glue's op consuming the stream is skipped with the middle, not run every step
    middle = next(p for p in m._dit_cachepass.graphs[0].pieces if p.kind == "middle")
    ops = [n for n in middle.gm.graph.nodes if n.op.startswith("call")]
    outside_blocks = [n for n in ops if "blocks" not in str(n.meta.get("nn_module_stack", ""))]
    if glue == "control":  # the hint adds after blocks 2 and 4 (the hint itself is loop-invariant)
        assert len(outside_blocks) >= 2
    else:  # the perceiver layers after blocks 1..4
        assert sum("perceiver" in str(n.meta.get("nn_module_stack", "")) for n in ops) >= 4


def test_cached_step_reuses_middle_residual_exactly():
    """On a cached step, output = Bn(Fn(x) + R) where R is the middle residual of the last
    computed step: check against a hand-written run of the same blocks."""
    ref, m = twin(glue="none")
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.99,
                                     max_warmup_steps=1), backend="eager")
    run(m, [0])
    out1 = run(m, [1])[0]
    assert dcp.summary(m).cached_steps == [1]
    with torch.no_grad():
        def fn_and_middle(step):
            x = toy_inputs(step)
            temb = ref.t_embed(x["timestep"][:, None] / 1000)
            h = ref.embed(x["hidden_states"])
            for b in ref.blocks[:2]:
                h = b(h, temb)
            hm = h
            for b in ref.blocks[2:5]:
                hm = b(hm, temb)
            return h, hm, temb
        h0, hm0, _ = fn_and_middle(0)
        h1, _, temb1 = fn_and_middle(1)
        expect = ref.out(ref.blocks[5](h1 + (hm0 - h0), temb1))
    torch.testing.assert_close(out1, expect, rtol=1e-5, atol=1e-6)


def test_no_loop_warns_and_runs_uncached_or_raises_in_strict():
    torch.manual_seed(0)
    m = NoLoop().eval()
    expect = run(m, [0])[0]
    dcp.compile(m, dcp.DBCacheConfig(), backend="eager")
    with pytest.warns(UserWarning, match="uncached: .*no ModuleList"):
        out = run(m, [0])[0]
    torch.testing.assert_close(out, expect)
    strict = dcp.compile(NoLoop().eval(), dcp.DBCacheConfig(), backend="eager", strict=True)
    with pytest.raises(Exception, match="strict=True"):
        run(strict, [0])


def test_graph_break_inside_loop_is_explained_and_runs_uncached_on_the_graph_path():
    """Forced onto the graph path (path="graph"), a loop broken by a graph break runs uncached and
    says so; the default path="auto" caches it at the block level (tests/test_block_path.py)."""
    ref, m = twin(item_break=True)
    rep = dcp.explain(m, **toy_inputs(0), cache_config=dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1))
    assert rep.cached and rep.path == "block", str(rep)
    assert "graph path" in str(rep), str(rep)
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1), backend="eager", path="graph")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = run(m, range(2))
    assert any("uncached" in str(x.message) for x in w)
    for a, b in zip(run(ref, range(2)), outs):
        torch.testing.assert_close(b, a)


def test_too_few_blocks_for_fn_plus_bn_is_explained():
    _, m = twin()
    rep = dcp.explain(m, **toy_inputs(0), cache_config=dcp.DBCacheConfig(Fn_compute_blocks=4, Bn_compute_blocks=2))
    assert not rep.cached and "Fn + Bn < 6" in str(rep)


def test_disable_restores_forward_and_params_untouched():
    ref, m = twin()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    forward = m.forward
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.9,
                                     max_warmup_steps=1), backend="eager")
    assert m.forward is not forward
    run(m, range(3))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    dcp.disable(m)
    assert "forward" not in m.__dict__ and not hasattr(m, "_dit_cachepass")
    torch.testing.assert_close(run(m, [2])[0], run(ref, [2])[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="not compiled by dit_cachepass"):
        dcp.summary(m)


def test_long_skip_out_of_the_middle_is_never_cached_stale():
    """With F1B2 the skip from block 1 (middle) is an argument of block 4 (Bn): no residual
    can rebuild it, so the loop must always compute rather than reuse last step's tensor."""
    ref, m = twin(glue="skip_arg")
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=2, residual_diff_threshold=0.9,
                                     max_warmup_steps=0), backend="eager")
    with pytest.warns(UserWarning, match="always computes: middle output"):
        outs = run(m, range(4))
    assert dcp.summary(m).cached_steps == []
    assert {r.reason for r in dcp.summary(m).loops[0].steps} == {"unsafe-middle"}
    for a, b in zip(run(ref, range(4)), outs):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
