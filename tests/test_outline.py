"""Regional lowering on the graph path (``outline``): blocks of one structure share one compiled
graph, the piece computes what the whole piece computes, and a piece that cannot be cut safely
compiles whole. (ToyDiT inputs vary slowly, so threshold 0.5 caches.)"""

import torch
import torch.fx as fx

import dit_cachepass as dcp
from dit_cachepass.compiler import lower
from dit_cachepass.compiler import outline as outline_mod
from dit_cachepass.compiler.outline import RegionCache, outline, structure_key
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1)


def _captured(fn, *args) -> fx.GraphModule:
    """``fn``'s graph as dynamo captures it (fake values in ``meta``, weights as inputs)."""
    box = []

    def backend(gm, example_inputs):
        box.append(gm)
        return gm.forward

    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return box[-1]


def _tag(gm: fx.GraphModule, spans: list) -> list[fx.Node]:
    """Tag the graph's ops by position: ``spans`` lists (count, tag); tag None is glue."""
    ops = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert len(ops) == sum(k for k, _ in spans), [n.format_node() for n in ops]
    i = 0
    for k, tag in spans:
        for n in ops[i:i + k]:
            if tag is not None:
                n.meta["dcp_block"] = tag
        i += k
    return ops


def _counting_cache():
    compiled = []

    def compile_fn(gm, args):
        compiled.append(gm)
        return gm.forward
    return RegionCache(compile_fn), compiled


def two_blocks(x, w1, w2):
    h = torch.relu(x) * 2 + 1 - x  # glue: 4 ops (compiled when MIN_GLUE_OPS <= 4)
    h = h + torch.tanh(h @ w1)  # block 0: 3 ops
    return h + torch.tanh(h @ w2)  # block 1: same ops, other weights


def _args():
    torch.manual_seed(0)
    return torch.randn(4, 8), torch.randn(8, 8), torch.randn(8, 8)


def test_blocks_of_one_structure_share_one_compiled_graph(monkeypatch):
    monkeypatch.setattr(outline_mod, "MIN_GLUE_OPS", 4)  # the 4-op glue run is compiled too
    args = _args()
    gm = _captured(two_blocks, *args)
    _tag(gm, [(4, None), (3, (0, 0)), (3, (0, 1))])
    cache, compiled = _counting_cache()
    outer = outline(gm, cache)
    assert outer is not None
    sites = [n for n in outer.graph.nodes if n.op == "call_function" and n.target.__name__.startswith(("block", "glue"))]
    names = [s.target.__name__ for s in sites]
    assert names[0].startswith("glue_") and names[1:] == ["block_0_0", "block_0_1"]
    torch.testing.assert_close(outer(*args)[0], two_blocks(*args))
    # glue and one block graph compiled: the second block reuses the first one's
    assert len(compiled) == 2 and len(cache.fns) == 2 and cache.compiles == 2
    assert sites[1].target.slot[0] is sites[2].target.slot[0]
    # a second call compiles nothing
    outer(*args)
    assert len(compiled) == 2
    # on a CPU (compile_glue=False) only the blocks are compiled: the glue runs inline, and a
    # piece without blocks runs as it is
    cache, compiled = _counting_cache()
    outer = outline(gm, cache, compile_glue=False)
    torch.testing.assert_close(outer(*args)[0], two_blocks(*args))
    assert [n.target.__name__ for n in outer.graph.nodes if hasattr(n.target, "slot")] == ["block_0_0", "block_0_1"]
    assert len(compiled) == 1
    glue_only = _captured(two_blocks, *args)
    assert outline(glue_only, cache, compile_glue=False) is glue_only and outline(glue_only, cache) is None


def test_short_glue_runs_inline_and_other_layouts_compile_apart(monkeypatch):
    def f(x, w, y):  # (arguments in the order the graph first reads them: its placeholders)
        a = torch.tanh(x @ w) + x  # block 0 on a contiguous input
        return torch.tanh(y @ w) + y + a  # block 1 on a transposed one, then one glue op

    torch.manual_seed(0)
    x, w = torch.randn(8, 8), torch.randn(8, 8)
    y = torch.randn(8, 8).t()

    def run(min_glue_ops):
        monkeypatch.setattr(outline_mod, "MIN_GLUE_OPS", min_glue_ops)
        gm = _captured(f, x, w, y)
        glue = _tag(gm, [(3, (0, 0)), (3, (0, 1)), (1, None)])[-1]
        cache, compiled = _counting_cache()
        outer = outline(gm, cache)
        torch.testing.assert_close(outer(x, w, y)[0], f(x, w, y))
        sites = [n.target.__name__ for n in outer.graph.nodes if n.op == "call_function" and hasattr(n.target, "slot")]
        inline = [n for n in outer.graph.nodes if n.op == "call_function" and n.target is glue.target]
        return sites, inline, compiled

    # the one-op glue run is below the threshold: it runs in the piece's own code
    sites, inline, compiled = run(2)
    assert sites == ["block_0_0", "block_0_1"] and len(inline) == 1
    # same block structure, other strides (Inductor would assert them): two compiled graphs
    assert len(compiled) == 2 and all(sum(n.op == "call_function" for n in g.graph.nodes) == 3 for g in compiled)
    # at the threshold the same run is a compiled region of its own
    sites, inline, compiled = run(1)
    assert sites[:2] == ["block_0_0", "block_0_1"] and sites[2].startswith("glue_") and not inline
    assert len(compiled) == 3


def test_a_block_missing_a_dead_output_runs_the_full_blocks_graph():
    """The last block of a loop lost an op whose value nothing read (dynamo removed it): it
    calls the graph compiled for its siblings and keeps the outputs it has (``extends``)."""
    def f(x, w1, w2):
        h = torch.tanh(x @ w1)
        p, q = h * 2, h + 1  # block 0: both outputs read
        q2 = torch.tanh(q @ w2) + 1  # block 1: its "* 2" was dead code
        return p + q2

    args = _args()
    gm = _captured(f, *args)
    _tag(gm, [(4, (0, 0)), (3, (0, 1)), (1, None)])
    cache, compiled = _counting_cache()
    outer = outline(gm, cache)
    torch.testing.assert_close(outer(*args)[0], f(*args))
    assert len(compiled) == 1 and cache.compiles == 1 and len(cache.fns) == 2
    sites = [n.target for n in outer.graph.nodes if n.op == "call_function" and hasattr(n.target, "slot")]
    big, small = compiled[0].graph, sites[1].region.graph
    assert outline_mod.extends(big, small) == (1,)
    assert outline_mod.extends(small, big) is None  # the reverse lacks an op: compiled apart


def test_strides_of_size_one_dims_do_not_split_a_region():
    """FLUX's single blocks return slices of one (1, T, D) tensor: strided (T*D, D, 1) where the
    first block's inputs are (N*D, D, 1). No index moves along a size-1 dim, so every block
    shares one Inductor graph, and Inductor's entry check accepts the other strides."""
    def f(x, w1, w2):
        h = torch.cat([torch.tanh(x @ w1), x[:, :2]], 1)[:, 2:]  # block 0: a (1, 8, 8) slice of (1, 10, 8)
        return torch.cat([torch.tanh(h @ w2), h[:, :2]], 1)[:, 2:]  # block 1

    torch.manual_seed(0)
    args = torch.randn(1, 8, 8), torch.randn(8, 8), torch.randn(8, 8)
    gm = _captured(f, *args)
    n = sum(1 for node in gm.graph.nodes if node.op == "call_function")
    _tag(gm, [(n // 2, (0, 0)), (n // 2, (0, 1))])
    cache = lower.region_cache("inductor", dcp.CompileOptions(lowering="regional"))
    outer = outline(gm, cache)
    torch.testing.assert_close(outer(*args)[0], f(*args))
    assert cache.compiles == 1
    assert outline_mod._layout([args[0]]) == outline_mod._layout([torch.randn(1, 10, 8)[:, 2:]])
    assert outline_mod._layout([args[0]]) != outline_mod._layout([torch.randn(2, 10, 8)[:, 2:]])


def test_structure_key_sees_constants_not_names():
    gm = _captured(lambda x, w1, w2: (torch.tanh(x @ w1) * 0.5, torch.tanh(x @ w2) * 0.5, torch.tanh(x @ w2) * 0.25),
                   *_args())
    ops = _tag(gm, [(3, (0, 0)), (3, (0, 1)), (3, (0, 2))])
    keys = []
    for k in range(3):
        sub = fx.Graph()
        env = {}
        for n in ops[3 * k:3 * k + 3]:
            env[n] = sub.node_copy(n, lambda a: env.setdefault(a, sub.placeholder(f"p{len(env)}")))
        sub.output(env[ops[3 * k + 2]])
        keys.append(structure_key(sub))
    assert keys[0] == keys[1] and keys[1] != keys[2]


def test_pieces_that_cannot_be_cut_compile_whole():
    args = _args()
    # a block reads a glue value made after the block's first op
    def late(x, w1, w2):
        a = torch.tanh(x @ w1)
        g = x * 3
        return a + g

    gm = _captured(late, *args)
    _tag(gm, [(2, (0, 0)), (1, None), (1, (0, 0))])
    assert outline(gm, _counting_cache()[0]) is None
    # a block whose output is not a tensor (as far as the capture knows)
    gm = _captured(two_blocks, *args)
    ops = _tag(gm, [(4, None), (3, (0, 0)), (3, (0, 1))])
    ops[6].meta["example_value"] = 3
    assert outline(gm, _counting_cache()[0]) is None
    # an autocast region inside the piece: its markers must stay around the ops they govern
    def autocast(x, w1, w2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.tanh(x @ w1)
        return h.float() + x

    gm = _captured(autocast, *args)
    for n in gm.graph.nodes:
        if n.op == "call_function":
            n.meta["dcp_block"] = (0, 0)
    assert outline(gm, _counting_cache()[0]) is None
    # no block at all: nothing to share
    gm = _captured(two_blocks, *args)
    assert outline(gm, _counting_cache()[0]) is None


def _run(m, steps):
    with torch.no_grad():
        return [m(**toy_inputs(s)) for s in range(steps)]


def _regions(m, runner=None):
    """The runner's region cache and every region call site of its outlined pieces."""
    runner = runner or dcp.api._session(m).runners[-1]
    outers = [fn.__self__ for f in runner.fns for fn in f.fns.values() if isinstance(getattr(fn, "__self__", None),
                                                                                     fx.GraphModule)]
    sites = [n.target for g in outers for n in g.graph.nodes
             if n.op == "call_function" and getattr(n.target, "slot", None) is not None]
    return runner.regions, sites


def test_regional_lowering_decides_and_computes_like_full(monkeypatch):
    calls = []
    real = lower.compile_graph
    monkeypatch.setattr(lower, "compile_graph", lambda gm, *a, **k: calls.append(gm) or real(gm, *a, **k))
    torch.manual_seed(0)
    full = dcp.compile(ToyDiT(n=6).eval(), dcp.DBCacheConfig(**CFG), backend="aot_eager")
    torch.manual_seed(0)
    regional = dcp.compile(ToyDiT(n=6).eval(), dcp.DBCacheConfig(**CFG), backend="aot_eager", lowering="regional")
    want = _run(full, 6)
    n_full = len(calls)
    got = _run(regional, 6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert [r.cached for r in dcp.summary(regional).loops[0].steps] == [
        r.cached for r in dcp.summary(full).loops[0].steps]
    assert any(r.cached for r in dcp.summary(regional).loops[0].steps)
    cache, sites = _regions(regional)
    blocks = [s for s in sites if s.__name__.startswith("block")]
    assert len(blocks) == 6  # every block is a region ...
    assert len({id(s.slot[0]) for s in blocks}) <= 2  # ... and at most two graphs serve them
    assert len(calls) - n_full == cache.compiles < len(blocks)
    assert not [s for s in sites if not s.__name__.startswith("block")]  # on a CPU, glue is not compiled


def test_regional_lowering_under_inductor():
    torch.manual_seed(0)
    ref = ToyDiT(n=4).eval()
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT(n=4).eval(), dcp.DBCacheConfig(**CFG), lowering="regional")
    outs = _run(m, 4)
    with torch.no_grad():
        for s, out in enumerate(outs):
            rec = dcp.summary(m).loops[0].steps[s]
            if not rec.cached:
                torch.testing.assert_close(out, ref(**toy_inputs(s)), rtol=1e-4, atol=1e-4)
    cache, sites = _regions(m)
    assert len([s for s in sites if s.__name__.startswith("block")]) == 4
    assert cache.compiles < len(sites)


def test_torch_compile_backend_lowers_regionally():
    """``torch.compile(backend="dit_cache", options={"lowering": "regional"})``: the backend
    sees the whole graph, so it can lower regionally too (the block path could not)."""
    torch.manual_seed(0)
    ref = ToyDiT(n=6).eval()
    torch.manual_seed(0)
    inner = ToyDiT(n=6).eval()
    m = torch.compile(inner, backend="dit_cache", options={
        "cache_config": dcp.DBCacheConfig(**CFG), "backend": "aot_eager", "lowering": "regional"})
    with torch.no_grad():
        out = m(**toy_inputs(0))
        torch.testing.assert_close(out, ref(**toy_inputs(0)), rtol=1e-5, atol=1e-5)
    cache, sites = _regions(None, dcp.backend.session_of(inner).runners[-1])
    assert cache is not None and len([s for s in sites if s.__name__.startswith("block")]) == 6


def test_dbprune_and_dynamic_shapes_under_regional_lowering():
    """DBPrune's per-block middle pieces are one block each: they all share the block graph.
    ``dynamic=True``: blocks that read symbolic sizes leave their piece compiled whole; either
    way the outputs and decisions are those of the full lowering."""
    for prune in (True, False):
        cfg = dcp.DBPruneConfig(**CFG) if prune else dcp.DBCacheConfig(**CFG)
        dyn = {} if prune else dict(dynamic=True)
        torch.manual_seed(0)
        full = dcp.compile(ToyDiT(n=6).eval(), cfg, backend="aot_eager", **dyn)
        torch.manual_seed(0)
        regional = dcp.compile(ToyDiT(n=6).eval(), cfg, backend="aot_eager", lowering="regional", **dyn)
        for a, b in zip(_run(regional, 6), _run(full, 6)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        steps = [[r.cached for r in dcp.summary(x).loops[0].steps] for x in (regional, full)]
        assert steps[0] == steps[1] and any(steps[0]), steps
        if prune:
            cache, sites = _regions(regional)
            middle = [s for s in sites if s.__name__.startswith("block")]
            assert len(middle) == 6 and len({id(s.slot[0]) for s in middle}) <= 2
