"""Runtime behaviour: generations, recompiles, shape changes, non-finite diffs."""

import pytest
import torch
from torch._dynamo.utils import counters

import dit_cachepass as dcp
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1)


def make(**cfg):
    torch.manual_seed(0)
    ref = ToyDiT().eval()
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), dcp.DBCacheConfig(**{**CFG, **cfg}), backend="eager")
    return ref, m


def call(m, step, **kw):
    with torch.no_grad():
        return m(**toy_inputs(step, **kw))


def test_zero_recompiles_over_two_generations():
    _, m = make()
    graphs_before = counters["stats"]["unique_graphs"]
    for _ in range(2):
        for s in range(6):
            call(m, s)
    session = m._dit_cachepass
    assert len(session.graphs) == 1
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    assert session.generation == 1  # the timestep jumped back up once
    assert dcp.summary(m).loops[0].generations == 2


def test_new_generation_by_timestep_jump_never_reuses_old_cache():
    ref, m = make()
    for s in range(5):
        call(m, s)
    assert dcp.summary(m).cached_steps, "the first generation should cache"
    out = call(m, 0)  # a new generation starts: step 0 is warmup, computed in full
    s = dcp.summary(m)
    assert s.loops[0].steps[0].reason == "warmup" and s.cached_steps == []
    torch.testing.assert_close(out, call(ref, 0), rtol=0, atol=0)


def test_num_inference_steps_resets_exactly_at_n():
    _, m = make(num_inference_steps=4, detect_new_generation=False)
    for s in range(4):
        call(m, s)
    call(m, 4)  # same timestep sequence continues, but n=4 calls have run: new generation
    st = dcp.summary(m).loops[0]
    assert [r.step for r in st.steps] == [0] and st.steps[0].reason == "warmup"


def test_refresh_starts_a_new_generation():
    _, m = make(detect_new_generation=False)
    for s in range(4):
        call(m, s)
    dcp.refresh(m)
    call(m, 4)
    assert [r.reason for r in dcp.summary(m).loops[0].steps] == ["warmup"]


def test_batch_change_mid_generation_forces_full_compute():
    ref, m = make()
    for s in range(3):
        call(m, s)
    assert dcp.summary(m).cached_steps
    out = call(m, 3, batch=1)  # recompiled graph, same loop state: shapes differ
    rec = dcp.summary(m).loops[0].steps[-1]
    assert not rec.cached and rec.reason == "shape-change"
    torch.testing.assert_close(out, call(ref, 3, batch=1), rtol=0, atol=0)


def test_nan_diff_forces_compute():
    _, m = make()
    call(m, 0)
    x = toy_inputs(1)
    x["hidden_states"][0, 0, 0] = float("nan")
    with torch.no_grad():
        m(**x)
    rec = dcp.summary(m).loops[0].steps[-1]
    assert not rec.cached and rec.reason == "non-finite-diff"


def test_two_compiled_modules_do_not_share_state():
    _, a = make()
    _, b = make(residual_diff_threshold=0.0)
    for s in range(4):
        call(a, s)
        call(b, s)
    assert dcp.summary(a).cached_steps and not dcp.summary(b).cached_steps
    assert a._dit_cachepass is not b._dit_cachepass


def test_summary_str_and_repr_are_readable():
    _, m = make()
    for s in range(4):
        call(m, s)
    text = str(dcp.summary(m))
    assert "| blocks" in text and "timeline" in text and "P50" in text
    assert "cached" in repr(dcp.summary(m)) and "DBCache_F1B1" in repr(m._dit_cachepass)


def test_torch_compile_backend_entry_point():
    from importlib.metadata import entry_points

    names = {e.name for e in entry_points(group="torch_dynamo_backends")}
    assert "dit_cache" in names
    torch.manual_seed(0)
    ref = ToyDiT().eval()
    torch.manual_seed(0)
    t = torch.compile(ToyDiT().eval(), backend="dit_cache",
                      options={"cache_config": dcp.DBCacheConfig(**CFG), "backend": "eager"})
    outs = [call(t, s) for s in range(5)]
    assert dcp.summary(t).cached_steps
    torch.testing.assert_close(outs[0], call(ref, 0), rtol=0, atol=0)
    with pytest.raises(Exception, match="unknown dit_cache option.*Fn"):
        torch.compile(ToyDiT(), backend="dit_cache", options={"Fn": 1})(**toy_inputs(0))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_lowered_pieces_match_eager(backend):
    torch.manual_seed(0)
    ref = ToyDiT().eval()
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), dcp.DBCacheConfig(**CFG), backend=backend)
    eager_cached = make()[1]
    for s in range(5):
        torch.testing.assert_close(call(m, s), call(eager_cached, s), rtol=1e-4, atol=1e-4)
    assert dcp.summary(m).cached_steps == dcp.summary(eager_cached).cached_steps != []
    pieces = m._dit_cachepass.graphs[0].pieces
    # glue before the loop runs inside the Fn piece, glue after it inside the Bn piece
    assert [p.kind for p in pieces] == ["Fn", "middle", "Bn"], pieces
    del ref


def test_dtype_change_mid_generation_forces_full_compute():
    ref, m = make()
    for s in range(3):
        call(m, s)
    m.double()
    ref.double()
    x = {k: v.double() for k, v in toy_inputs(3).items()}
    with torch.no_grad():
        out = m(**x)
    rec = dcp.summary(m).loops[0].steps[-1]
    assert not rec.cached and rec.reason == "shape-change"
    with torch.no_grad():
        torch.testing.assert_close(out, ref(**x), rtol=0, atol=0)


def test_count_up_timesteps_are_one_generation_until_they_jump_back():
    """Lumina2's pipeline passes 1 - t/1000, rising each step: that is not a new generation."""
    _, m = make()
    with torch.no_grad():
        for gen in range(2):
            for s in range(5):
                x = toy_inputs(s)
                x["timestep"] = torch.full((2,), 10.0 * s)
                m(**x)
    st = dcp.summary(m).loops[0]
    assert st.generations == 2 and [r.step for r in st.steps] == list(range(5))
    assert st.cached_steps, "the rising timestep must not reset the cache every step"


def test_summary_counts_executed_and_full_flops_per_piece():
    _, m = make()
    for s in range(6):
        call(m, s)
    sm = dcp.summary(m)
    torch.manual_seed(0)
    per_call = dcp.count_flops(ToyDiT().eval(), **toy_inputs(0))
    assert sm.call_flops == per_call and sm.calls == 6
    cached = len(sm.cached_steps)
    assert cached and sm.loops[0].middle_flops > 0
    assert sm.executed_flops == 6 * per_call - cached * sm.loops[0].middle_flops
    assert sm.ideal_speedup > 1 and "ideal speedup" in str(sm)


def test_dynamic_shape_capture_serves_two_resolutions():
    """torch.compile(..., backend="dit_cache", dynamic=True): one graph with symbolic sizes;
    pieces are specialized per shape, and a new resolution starts from a full compute."""
    torch.manual_seed(0)
    ref = ToyDiT().eval()
    torch.manual_seed(0)
    t = torch.compile(ToyDiT().eval(), backend="dit_cache", dynamic=True,
                      options={"cache_config": dcp.DBCacheConfig(**{**CFG, "residual_diff_threshold": 0.0}),
                               "backend": "aot_eager"})
    for tokens in (16, 24):
        for s in range(3):
            torch.testing.assert_close(call(t, s, tokens=tokens), call(ref, s, tokens=tokens), rtol=1e-5, atol=1e-5)


def test_summary_plot_writes_a_png(tmp_path):
    _, m = make()
    for s in range(5):
        call(m, s)
    path = dcp.summary(m).plot(str(tmp_path / "timeline.png"), threshold=0.5)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_inductor_piece_recompiles_for_new_strides_instead_of_asserting():
    """Inductor asserts input strides on entry; the same shape laid out differently (a view out
    of a collective on one step, a fresh residual apply on the next) must get its own build."""
    from dit_cachepass.compiler.lower import LazyCompiled

    gm = torch.fx.symbolic_trace(lambda x: (x * 2 + 1,))
    piece = LazyCompiled(gm, "inductor")
    x = torch.randn(2, 3, 4)
    strided = torch.randn(2, 4, 3).transpose(1, 2)
    torch.testing.assert_close(piece(x)[0], x * 2 + 1)
    torch.testing.assert_close(piece(strided)[0], strided * 2 + 1)
    assert len(piece.fns) == 2


def test_inductor_piece_ignores_strides_of_size_one_dims():
    """A (1, 8, 4) slice of a (1, 10, 4) tensor is strided (40, 4, 1), a fresh one (32, 4, 1): the
    same layout for every index, so one build serves both (as one region does, test_outline);
    a batch of 2 sliced the same way is a different layout and gets its own."""
    from dit_cachepass.compiler.lower import LazyCompiled

    gm = torch.fx.symbolic_trace(lambda x: (x * 2 + 1,))
    piece = LazyCompiled(gm, "inductor")
    fresh, sliced = torch.randn(1, 8, 4), torch.randn(1, 10, 4)[:, 2:]
    for x in (fresh, sliced, fresh):
        torch.testing.assert_close(piece(x)[0], x * 2 + 1)
    assert len(piece.fns) == 1
    batch = torch.randn(2, 10, 4)[:, 2:]
    torch.testing.assert_close(piece(batch)[0], batch * 2 + 1)
    two = torch.randn(2, 8, 4)
    torch.testing.assert_close(piece(two)[0], two * 2 + 1)
    assert len(piece.fns) == 3


def test_models_behind_a_diffusers_hook_get_their_own_dynamo_cache():
    """diffusers' HookRegistry (used by context parallelism) replaces ``forward`` with
    ``partial(new_forward, module)``: one code object for every hooked model. Each compiled
    model must get a private copy, or the recompile limit silently leaves later ones uncached."""
    from diffusers.hooks import HookRegistry, ModelHook
    from dit_cachepass.testing.zoo import ZOO

    e = ZOO["flux"]
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.0)
    with torch._dynamo.config.patch(recompile_limit=2), torch.no_grad():
        for _ in range(3):
            m = e.build()
            HookRegistry.check_if_exists_or_initialize(m).register_hook(ModelHook(), "noop")
            ref = e.build()
            m = dcp.compile(m, cfg, backend="eager", strict=True)  # strict: uncached would raise
            x = e.inputs(0, 4, 1.0)
            torch.testing.assert_close(m(**x, return_dict=False)[0], ref(**x, return_dict=False)[0])
            assert any(g.loops for g in m._dit_cachepass.graphs)


def test_the_timestep_is_read_after_the_fn_piece(monkeypatch):
    """Reading a GPU timestep is a host sync: it waits until the decision needs it (after the Fn
    blocks were launched), where the diff's own sync happens anyway."""
    import dit_cachepass.runtime.calls as session_mod

    _, m = make()
    call(m, 0)
    runner = m._dit_cachepass.runners[0]
    k = next(i for i, p in enumerate(runner.prog.pieces) if p.kind == "Fn")
    order, fn, scalar = [], runner.fns[k], session_mod._scalar
    runner.fns[k] = lambda *a: (order.append("Fn"), fn(*a))[1]
    monkeypatch.setattr(session_mod, "_scalar", lambda t: (order.append("timestep"), scalar(t))[1])
    call(m, 1)
    assert order == ["Fn", "timestep"]
    assert [r.step for r in dcp.summary(m).loops[0].steps] == [0, 1]
