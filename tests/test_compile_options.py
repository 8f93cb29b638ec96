"""torch.compile's knobs (mode, options, dynamic, fullgraph) reach every piece the pass compiles.

Inductor runs a ``post_grad_custom_post_pass`` inside the config patches of the piece it
compiles, so the pass below sees what Inductor saw: proof that a setting reached it."""

import uuid

import pytest
import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

import dit_cachepass as dcp
from dit_cachepass.compiler.lower import CompileOptions
from dit_cachepass.runtime.middle import MiddleCall
from dit_cachepass.runtime.session import Session
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1)


class Spy(CustomGraphPass):
    """Records, for every graph Inductor compiles, the Inductor settings in force."""

    def __init__(self):
        self.seen: list[dict] = []
        self._id = uuid.uuid4().hex  # a new key per test: no FX-graph-cache hit skips the pass

    def __call__(self, graph: torch.fx.Graph) -> None:
        cfg = torch._inductor.config
        self.seen.append({"epilogue_fusion": cfg.epilogue_fusion, "cudagraphs": cfg.triton.cudagraphs})

    def uuid(self):
        return self._id


def _model():
    torch.manual_seed(0)
    return ToyDiT(n=4).eval()


def _run(m, steps=3):
    with torch.no_grad():
        return [m(**toy_inputs(s)) for s in range(steps)]


def test_options_are_validated():
    with pytest.raises(ValueError, match="mode='fast' is invalid"):
        CompileOptions(mode="fast")
    with pytest.raises(ValueError, match="lowering=.blocks. is invalid"):
        CompileOptions(lowering="blocks")
    with pytest.raises(ValueError, match="did you mean 'max_autotune'"):
        CompileOptions(options={"max_autotun": True})
    with pytest.raises(TypeError, match="dynamic='yes' is invalid"):
        CompileOptions(dynamic="yes")
    with pytest.raises(ValueError, match="unknown dit_cache option"):
        dcp.backend.session_for_options({"cache_confg": dcp.DBCacheConfig()})
    # mode's settings as torch.compile derives them; options win where both set one
    assert CompileOptions(mode="max-autotune-no-cudagraphs").inductor_patches() == {
        "max_autotune": True, "coordinate_descent_tuning": True}
    assert CompileOptions(mode="reduce-overhead", options={"triton.cudagraphs": False}).cudagraphs is False


@pytest.mark.parametrize("options", [[dcp.DBCacheConfig(**CFG)], [("cache_config", dcp.DBCacheConfig(**CFG))],
                                     "cache_config", 3])
def test_backend_options_not_a_dict_name_options_and_the_fix(options):
    """Not a dict: dynamo wraps the backend's error in BackendCompilerFailed, whose message
    must still say that ``options`` is the culprit and what it takes."""
    m = torch.compile(_model(), backend="dit_cache", options=options)
    with pytest.raises(Exception) as err:
        _run(m, 1)
    msg = str(err.value)
    assert "options" in msg and "expects options to be a dict" in msg, msg
    assert "options={'cache_config': dcp.DBCacheConfig(...)}" in msg, msg
    with pytest.raises(TypeError, match=r"options to be a dict, got (list|str|int)"):
        dcp.backend.session_for_options(options)


def test_dcp_compile_options_reach_inductor_for_every_piece():
    spy = Spy()
    m = dcp.compile(_model(), dcp.DBCacheConfig(**CFG), options={"post_grad_custom_post_pass": spy,
                                                                 "epilogue_fusion": False})
    ref = _run(_model())
    outs = _run(m)
    pieces = sum(len(r.prog.pieces) for r in m._dit_cachepass.runners)
    assert pieces >= 3 and len(spy.seen) >= pieces  # every piece went through Inductor with the pass
    assert all(s["epilogue_fusion"] is False for s in spy.seen)
    torch.testing.assert_close(outs[0], ref[0], rtol=1e-4, atol=1e-4)


def test_backend_options_and_mode_reach_inductor(recwarn):
    spy = Spy()
    m = _model()
    compiled = torch.compile(m, backend="dit_cache", options={
        "cache_config": dcp.DBCacheConfig(**CFG), "mode": "reduce-overhead", "post_grad_custom_post_pass": spy})
    out = _run(compiled, 1)[0]
    # DBCache under CUDA graphs was verified on a GPU (tests/test_gpu.py on an H200): no warning
    assert not [w for w in recwarn if "not been verified" in str(w.message)]
    assert spy.seen and all(s["cudagraphs"] is True for s in spy.seen)  # CPU tensors: Inductor skips the graphs
    torch.testing.assert_close(out, _run(_model(), 1)[0], rtol=1e-4, atol=1e-4)


def test_fullgraph_raises_on_a_graph_break():
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT(n=4, item_break=True).eval(), dcp.DBCacheConfig(**CFG), backend="eager", fullgraph=True)
    with pytest.raises(torch._dynamo.exc.TorchDynamoException, match="data-dependent|graph break"):
        _run(m, 1)
    # without fullgraph the same model is served (capture-flag retry or block path)
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT(n=4, item_break=True).eval(), dcp.DBCacheConfig(**CFG), backend="eager")
    _run(m, 1)


@pytest.mark.parametrize("dynamic,graphs", [(True, 1), (False, 2)])
def test_dynamic(dynamic, graphs):
    m = dcp.compile(_model(), dcp.DBCacheConfig(**CFG), backend="aot_eager", dynamic=dynamic)
    with torch.no_grad():
        for tokens in (16, 24):
            m(**toy_inputs(0, tokens=tokens))
    assert len(m._dit_cachepass.runners) == graphs  # True: one symbolic graph; False: one per shape


def test_backend_with_dynamic_true_lowers_every_piece(recwarn):
    """torch.compile(dynamic=True) passes a LayerNorm's eps as a 0-d tensor read with .item():
    the pieces bake its value in instead of running eagerly with a lowering warning."""
    torch.manual_seed(0)
    ref = ToyDiT(n=4).eval()
    m = torch.compile(_model(), backend="dit_cache", dynamic=True,
                      options={"cache_config": dcp.DBCacheConfig(**CFG)})
    with torch.no_grad():
        outs = [m(**toy_inputs(s, tokens=tokens)) for tokens in (16, 24) for s in range(5)]
        refs = [ref(**toy_inputs(s, tokens=tokens)) for tokens in (16, 24) for s in range(5)]
    assert not [w for w in recwarn if "dit_cachepass" in str(w.message)], [str(w.message) for w in recwarn]
    session = dcp.api._session(m)
    assert len(session.runners) == 1  # one symbolic graph served both token counts
    assert dcp.summary(m).cached_steps
    for k in (0, 5):  # the first step of each generation is computed: equal to eager
        torch.testing.assert_close(outs[k], refs[k])


def test_cudagraphs_state_owns_what_it_keeps():
    """Under CUDA graphs a piece's outputs are overwritten by the next replay: what the state
    keeps of them (DBPrune's reference: the block input) must be a copy."""
    with pytest.warns(UserWarning, match="with DBPrune have not been verified"):
        s = Session(dcp.DBPruneConfig(residual_diff_threshold=0.5, max_warmup_steps=0),
                    compile_options=CompileOptions(options={"triton.cudagraphs": True}))
    with torch.no_grad():  # as every cached call runs (calls with gradients keep no state)
        s.begin_call(torch.tensor(1.0))
        x = torch.randn(2, 4, 8)  # stands for a piece output in the graph pool
        call = MiddleCall(s, "loop", s.config, None, 3, None, 0, x, None, [x])
        call.computed([x + 1], [])
        kept = x.clone()
        x.fill_(7.0)  # the next replay overwrites the pool
        state = next(iter(s.states.values()))
        torch.testing.assert_close(state.buffers[3].reference, kept)
        s.end_call()


@pytest.mark.parametrize("calibrated", [False, True])
def test_cudagraphs_warn_only_where_unverified(recwarn, calibrated):
    """DBCache under CUDA graphs ran on an H200; a calibrator's factors have not: warn for those."""
    cal = dcp.TaylorSeerCalibratorConfig() if calibrated else None
    Session(dcp.DBCacheConfig(), calibrator_config=cal, compile_options=CompileOptions(mode="reduce-overhead"))
    Session(dcp.DBCacheConfig(), calibrator_config=cal)  # no CUDA graphs: never a warning
    msgs = [str(w.message) for w in recwarn if "not been verified" in str(w.message)]
    assert len(msgs) == calibrated and all("calibrator" in m for m in msgs)
    recwarn.clear()
    Session(dcp.DBCacheConfig(), calibrator_config=cal,
            compile_options=CompileOptions(mode="reduce-overhead", lowering="regional"))
    msgs = [str(w.message) for w in recwarn if "not been verified" in str(w.message)]
    assert len(msgs) == 1 and "lowering='regional'" in msgs[0] and ("TaylorSeer" in msgs[0]) == calibrated
