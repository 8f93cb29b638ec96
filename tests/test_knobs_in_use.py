"""The compile settings under what users do with a model: regional lowering and dynamic shapes
through a second prompt, a new resolution, a retried call and a copy. Every computed step must
equal the eager model, and no cached step may reuse a residual from another prompt or shape.
(ToyDiT inputs vary slowly, so threshold 0.5 caches.)"""

import contextlib
import copy

import pytest
import torch

import dit_cachepass as dcp
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1)

KNOBS = {
    "regional": dict(lowering="regional", backend="aot_eager", path="block"),
    "regional_graph": dict(lowering="regional", backend="aot_eager"),
    "dynamic": dict(dynamic=True, backend="aot_eager"),
    "backend_dynamic": None,  # torch.compile(backend="dit_cache", dynamic=True)
}


def _pair(knob):
    torch.manual_seed(0)
    ref = ToyDiT(n=4).eval()
    torch.manual_seed(0)
    if KNOBS[knob] is None:
        return ref, torch.compile(ToyDiT(n=4).eval(), backend="dit_cache", dynamic=True,
                                  options={"cache_config": dcp.DBCacheConfig(**CFG)})
    return ref, dcp.compile(ToyDiT(n=4).eval(), dcp.DBCacheConfig(**CFG), **KNOBS[knob])


def _steps(m):
    loops = dcp.summary(m).loops
    return loops[0].steps if loops else []  # (the block path's first call is its eager probe)


@contextlib.contextmanager
def _failing_after_the_middle(m, knob):
    """The next call raises after its middle was decided (an out-of-memory in the last block)."""
    def boom(*_):
        raise RuntimeError("out of memory (simulated)")

    if knob == "regional":  # blocks run as modules: a hook on the last block
        last_block = next(mod for name, mod in m.named_modules() if name.endswith("blocks.3"))
        handle = last_block.register_forward_pre_hook(boom)
        try:
            yield
        finally:
            handle.remove()
        return
    runner = dcp.api._session(m).runners[-1]  # graph path: the Bn piece of the current graph
    k = max(i for i, p in enumerate(runner.prog.pieces) if p.kind == "Bn")
    real, runner.fns[k] = runner.fns[k], boom
    try:
        yield
    finally:
        runner.fns[k] = real


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_prompts_resolutions_retries_and_copies(knob):
    ref, m = _pair(knob)
    with torch.no_grad():
        def check(step, computed=None, **kw):
            out, want = m(**toy_inputs(step, **kw)), ref(**toy_inputs(step, **kw))
            if not _steps(m):  # the probe: eager
                torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
                return None
            rec = _steps(m)[-1]
            if computed is not None:
                assert (not rec.cached) == computed, (step, kw, rec)
            if not rec.cached:
                torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
            return rec

        for s in range(5):  # first prompt: caches
            check(s)
        assert any(r.cached for r in _steps(m)), _steps(m)
        # a second prompt (new noise, the schedule starts again): its first step computes
        rec = check(0, computed=True, seed=1)
        assert rec.reason == "warmup"
        check(1, seed=1)
        # a new resolution mid-generation: nothing cached for the old shape is applied
        rec = check(2, computed=True, seed=1, tokens=24)
        assert rec.reason in ("shape-change", "no-reference"), rec
        for s in range(3, 5):
            check(s, seed=1, tokens=24)
        # a call that raises is filed as if it never happened; the retry takes its place
        n = len(_steps(m))
        with _failing_after_the_middle(m, knob), pytest.raises(RuntimeError, match="simulated"):
            m(**toy_inputs(5, seed=1, tokens=24))
        assert len(_steps(m)) == n
        check(5, seed=1, tokens=24)
        assert [r.step for r in _steps(m)][-2:] == [4, 5]
        # a copy caches on its own: its first call computes and matches eager, and its calls
        # never touch the original's state
        n = len(_steps(m))
        c = copy.deepcopy(m)
        out = c(**toy_inputs(0, seed=2))
        torch.testing.assert_close(out, ref(**toy_inputs(0, seed=2)), rtol=1e-5, atol=1e-5)
        c(**toy_inputs(1, seed=2))
        assert len(_steps(m)) == n
        assert _steps(c) and not _steps(c)[0].cached
