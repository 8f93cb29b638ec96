"""DBPrune on the shared rewrite: per-block pieces, per-block decisions."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO


def test_dynamic_prune_threshold_follows_cache_dit():
    c = dcp.DBPruneConfig(residual_diff_threshold=0.1, enable_dynamic_prune_threshold=True)
    assert c.prune_threshold([]) == 0.1
    assert c.prune_threshold([0.12, -1.0, 0.14]) == pytest.approx(0.13 * 1.25)  # mean of positives, relaxed
    assert c.prune_threshold([0.3, 0.3]) == 0.1  # relaxed 0.375 >= cap 0.2: stays at the base
    assert c.prune_threshold([0.01]) == 0.1  # never below the base
    assert dcp.DBPruneConfig(residual_diff_threshold=0.1).prune_threshold([0.12]) == 0.1
    assert dcp.DBPruneConfig().strify().startswith("DBPrune_F8B0")
    with pytest.raises(ValueError, match="non_prune_block_ids"):
        dcp.DBPruneConfig(non_prune_block_ids=[-1])


@pytest.mark.parametrize("name", ["flux", "wan", "sd3", "hunyuanvideo"])
def test_prune_rewrite_is_exact_at_threshold_zero_and_prunes_above(name):
    e = ZOO[name]
    with torch.no_grad():
        ref = [e.build()(**e.inputs(s, 6, 1.0), return_dict=False)[0] for s in range(6)]
    m = dcp.compile(e.build(), dcp.DBPruneConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.0),
                    backend="eager", strict=True)
    with torch.no_grad():
        outs = [m(**e.inputs(s, 6, 1.0), return_dict=False)[0] for s in range(6)]
    for a, b in zip(ref, outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    pieces = [p for p in m._dit_cachepass.graphs[0].pieces if p.kind == "middle"]
    assert len(pieces) >= 2 and all(p.block is not None for p in pieces)
    pruned = dcp.compile(e.build(), dcp.DBPruneConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=1,
                                                      residual_diff_threshold=0.5), backend="eager", strict=True)
    with torch.no_grad():
        for s in range(6):
            pruned(**e.inputs(s, 6, 1.0), return_dict=False)
    sm = dcp.summary(pruned)
    assert sum(l.pruned_blocks for l in sm.loops) > 0 and sm.ideal_speedup > 1, str(sm)
    assert "block runs pruned" in str(sm)


@pytest.mark.parametrize("name", ["flux", "wan", "pixart", "cogvideox"])
def test_dbprune_equals_plain_pytorch_reference(name):
    """Per-list loops, F1B1: same pruned steps, same pruned-block counts, same outputs."""
    from reference_dbcache import ReferenceDBPrune

    e = ZOO[name]
    F, B, warm, thr = 1, 1, 1, 0.25
    ref_model = e.build()
    refs = [ReferenceDBPrune(ref_model, lst, e.cache_dit_pattern[lst], F, B, thr, warm) for lst in e.block_lists]
    m = dcp.compile(e.build(), dcp.DBPruneConfig(Fn_compute_blocks=F, Bn_compute_blocks=B, residual_diff_threshold=thr,
                                                 max_warmup_steps=warm, loop_layout="per_list"),
                    backend="eager", strict=True)
    with torch.no_grad():
        for s in range(6):
            x = e.inputs(s, 6, 1.0)
            a, b = ref_model(**x, return_dict=False)[0], m(**x, return_dict=False)[0]
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    loops = {l.name: l for l in dcp.summary(m).loops}
    for lst, r in zip(e.block_lists, refs):
        assert [len(s.skipped) for s in loops[lst].steps] == r.pruned_per_step, lst
    assert sum(sum(r.pruned_per_step) for r in refs) > 0, "nothing pruned: the test would prove nothing"
