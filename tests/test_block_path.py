"""The block path: loops that no single dynamo graph holds are cached at the block-list level
with the graph path's runtime, state and policies; on models both paths serve, decisions and
outputs are identical. Inputs vary slowly (the zoo's tuned drift, toy_inputs 1 % a step);
thresholds are set from measured diffs so that both cached and computed steps occur."""

import statistics

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO
from reference_dbcache import assert_caches_like_the_reference
from toy_models import ToyDiT, toy_inputs

STEPS = 8


def toy(**kw):
    torch.manual_seed(0)
    return ToyDiT(**kw).eval()


def run_toy(model, steps=STEPS):
    with torch.no_grad():
        return [model(**toy_inputs(s)) for s in range(steps)]


def run_zoo(model, e, steps=STEPS):
    with torch.no_grad():
        return [model(**e.inputs(s, steps, 1.0), return_dict=False)[0] for s in range(steps)]


def test_a_graph_break_in_every_block_is_cached_at_the_block_level_like_the_reference():
    """The first three calls probe (graph path, capture-flag retry, block trace) and compute:
    with 3 warmup steps the reference computes them too."""
    m = assert_caches_like_the_reference(lambda: toy(item_break=True), run_toy, "blocks", 3, warmup=3)
    assert m._dit_cachepass.paths.name == "block"


def _decisions(model, kind, path, thr):
    cls = dcp.DBPruneConfig if kind == "DBPrune" else dcp.DBCacheConfig
    cal = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1) if kind == "TaylorSeer" else None
    cfg = cls(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=thr, max_warmup_steps=2)
    if model == "flux":
        e = ZOO["flux"]
        m = dcp.compile(e.build(), cfg, calibrator_config=cal, backend="eager", path=path, strict=True)
        outs = run_zoo(m, e)
    else:
        m = dcp.compile(toy(glue="control"), cfg, calibrator_config=cal, backend="eager", path=path, strict=True)
        outs = run_toy(m)
    loop = dcp.summary(m).loops[0]
    # step 0 is the block path's traced call: computed, not a loop step there
    steps = [(r.step, r.cached, tuple(r.skipped)) for r in loop.steps if r.step >= 1]
    diffs = [d for r in loop.steps for d in (r.diffs or [r.diff]) if d is not None]
    return outs, loop.name, steps, diffs


@pytest.mark.parametrize("kind", ["DBCache", "DBPrune", "TaylorSeer"])
@pytest.mark.parametrize("model", ["flux", "toy-control"])
def test_both_paths_take_identical_decisions(model, kind):
    """Glue inside the loop (a control hint after blocks 2 and 4) is skipped with the middle on
    both paths; FLUX chains its two lists on both. Threshold: the median measured diff."""
    thr = statistics.median(_decisions(model, kind, "graph", 1e-9)[3]) * 1.01
    go, gname, gsteps, _ = _decisions(model, kind, "graph", thr)
    bo, bname, bsteps, _ = _decisions(model, kind, "block", thr)
    assert gname == bname and gsteps == bsteps
    assert any(c for _, c, _ in gsteps), "nothing cached: the comparison would prove little"
    for a, b in zip(go[1:], bo[1:]):  # step 0 is the block path's traced (computed) call
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_block_path_is_bit_equal_at_threshold_zero_and_disable_restores_the_blocks():
    m = toy(item_break=True)
    forwards = [b.__dict__.get("forward") for b in m.blocks]
    ref = run_toy(toy(item_break=True), 4)
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.0),
                backend="eager")
    for a, b in zip(ref, run_toy(m, 4)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert all("forward" in b.__dict__ for b in m.blocks)
    dcp.disable(m)
    assert [b.__dict__.get("forward") for b in m.blocks] == forwards


def test_strict_accepts_a_model_that_the_block_path_caches():
    m = dcp.compile(toy(item_break=True), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1),
                    backend="eager", strict=True)
    run_toy(m, 4)  # graph path, capture-flag retry, block trace, cached run: no UnsupportedModelError
    assert m._dit_cachepass.paths.name == "block"
    forced = dcp.compile(toy(item_break=True), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1),
                         backend="eager", strict=True, path="graph")
    with pytest.raises(dcp.UnsupportedModelError):
        run_toy(forced, 1)


@pytest.mark.parametrize("name", ["mochi", "hunyuanvideo15"])
def test_the_first_generation_after_compile_decides_like_the_next_identical_one(name):
    """Issue 24.5: the path probes (graph, capture flags, block trace) run inside the first call,
    so that call is the chosen path's first computed step. Before, the probe calls were no loop
    steps: warmup started over mid-generation, and Mochi's two identical generations differed by
    0.66 (5 loop steps recorded of 6). Threshold 0.5 on the random zoo model: some steps cache."""
    e = ZOO[name]
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=1)
    m = dcp.compile(e.build(), cfg, backend="eager")
    outs, records = [], []
    for _ in range(2):
        with torch.no_grad(), dcp.generation(m, num_inference_steps=6):
            outs.append([m(**e.inputs(s, 6, 1.0), return_dict=False)[0] for s in range(6)])
        records.append([(r.step, r.cached) for r in dcp.summary(m).loops[0].steps])
    assert m._dit_cachepass.paths.name != "graph", "the model took the graph path: nothing probed"
    assert records[0] == records[1] and len(records[0]) == 6 and any(c for _, c in records[0])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
