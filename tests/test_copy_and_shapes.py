"""Copies and saves of a dcp.compile'd module, and many resolutions (issue 12).

- ``copy.deepcopy`` (before or after the first call) gives an independent compiled module:
  its own weights, its own fresh cache state, the same settings.
- ``torch.save`` / ``torch.load`` work: the loaded module compiles itself again on its first
  call, fresh state; ``state_dict()`` is unchanged by compiling.
- New resolutions do not burn dynamo's recompile limit (8): the 9th..12th token count is still
  cached; reaching a limit that disables caching warns and says why.
"""

import contextlib
import copy
import io
import warnings

import pytest
import torch

import dit_cachepass as dcp
from toy_models import ToyDiT, toy_inputs

EXACT = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.0)
LOOSE = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.99,
                          max_warmup_steps=1)


def toy(**kw):
    torch.manual_seed(0)
    return ToyDiT(**kw).eval()


def run(model, steps=range(3), **kw):
    with torch.no_grad():
        return [model(**toy_inputs(s, **kw)) for s in steps]


def scale_weights(model, factor=0.5):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)


def cached_now(model):
    """Cached steps of the current generation (not the summary's fallback to the last one)."""
    st = model._dit_cachepass.states[("blocks", 0)]
    return [r.step for r in st.records if r.cached]


def assert_same(outs, refs, atol=0.0):
    for a, b in zip(refs, outs):
        torch.testing.assert_close(b, a, rtol=0, atol=atol)


# -- copies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("called", [False, True], ids=["before-first-call", "after-first-call"])
def test_deepcopy_is_an_independent_compiled_module(called):
    m = dcp.compile(toy(), LOOSE, backend="eager")
    if called:
        run(m)
        assert cached_now(m) == [1, 2]
    calls_before = m._dit_cachepass.calls
    c = copy.deepcopy(m)
    assert c._dit_cachepass is not m._dit_cachepass and c._dit_cachepass.config == m._dit_cachepass.config
    assert c._dit_cachepass.calls == 0 and not c._dit_cachepass.states  # fresh state
    scale_weights(c)  # the copy must run its own weights, not the original's
    ref = toy()
    scale_weights(ref)
    with dcp.generation(c):
        out = run(c, range(1))[0]
    torch.testing.assert_close(out, run(ref, range(1))[0], rtol=0, atol=0)
    assert m._dit_cachepass.calls == calls_before  # the original saw none of the copy's calls
    # the copy caches on its own (warmup first), and the original still works unchanged
    with dcp.generation(c):
        run(c)
    assert cached_now(c) == [1, 2]
    with dcp.generation(m):
        assert_same(run(m, range(1)), run(toy(), range(1)))


def test_deepcopy_threshold_zero_matches_eager():
    m = dcp.compile(toy(glue="control"), EXACT, backend="eager")
    run(m)
    c = copy.deepcopy(m)
    assert_same(run(c, range(4)), run(toy(glue="control"), range(4)))


class CtxDiT(ToyDiT):
    """A diffusers-like ``cache_context`` (pipelines name their CFG branches with it)."""

    @contextlib.contextmanager
    def cache_context(self, name, step_index=None):
        yield


def test_deepcopy_cache_context_names_the_copys_branch():
    torch.manual_seed(0)
    m = dcp.compile(CtxDiT().eval(), LOOSE, backend="eager")
    c = copy.deepcopy(m)
    with torch.no_grad(), c.cache_context("uncond", step_index=0):
        c(**toy_inputs(0))
    assert ("blocks", "uncond") in c._dit_cachepass.states
    assert not m._dit_cachepass.states


def test_deepcopy_on_the_block_path_runs_the_copys_blocks():
    m = dcp.compile(toy(item_break=True), LOOSE, backend="eager", path="block")
    run(m)
    assert m._dit_cachepass.paths.name == "block"
    c = copy.deepcopy(m)
    scale_weights(c)
    ref = toy(item_break=True)
    scale_weights(ref)
    with dcp.generation(c):
        assert_same(run(c, range(1)), run(ref, range(1)))
    with dcp.generation(m):  # the original's wrapped blocks are untouched by the copy
        assert_same(run(m, range(1)), run(toy(item_break=True), range(1)))
    buf = io.BytesIO()
    torch.save(m, buf)


# -- saves ----------------------------------------------------------------------------------
def test_state_dict_is_unchanged_by_compile():
    plain, m = toy(), dcp.compile(toy(), LOOSE, backend="eager")
    run(m)
    a, b = plain.state_dict(), m.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("called", [False, True], ids=["before-first-call", "after-first-call"])
def test_torch_save_and_load_compile_again_lazily(called):
    m = dcp.compile(toy(), EXACT, backend="eager")
    if called:
        run(m)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    s = loaded._dit_cachepass
    assert s is not m._dit_cachepass and s.config == EXACT and s.backend == "eager"
    assert s.calls == 0 and not s.states and s.paths is None  # compiled again on its first call
    assert_same(run(loaded, range(4)), run(toy(), range(4)))
    assert dcp.summary(loaded).loops, "the loaded module caches again"
    dcp.disable(loaded)
    assert "forward" not in loaded.__dict__


# -- shapes ---------------------------------------------------------------------------------
TOKENS = list(range(4, 28, 2))  # 12 resolutions: more than dynamo's recompile limit (8)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_many_resolutions_keep_caching(backend):
    loose = dcp.compile(toy(), LOOSE, backend=backend)
    exact = dcp.compile(toy(), EXACT, backend=backend)
    ref = toy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no limit reached, nothing uncached
        for k, n in enumerate(TOKENS):
            with dcp.generation(loose):
                run(loose, tokens=n)
            assert cached_now(loose) == [1, 2], (k, n)
            with dcp.generation(exact):
                assert_same(run(exact, range(2), tokens=n), run(ref, range(2), tokens=n), atol=1e-6)
    # one static capture, then one with dynamic sizes serves every later resolution
    assert len(loose._dit_cachepass.graphs) <= 3
    if backend != "eager":  # the dynamic graph's pieces really are compiled, once per resolution
        runner = loose._dit_cachepass.runners[-1]
        assert all(len(fn.fns) >= len(TOKENS) - 2 for fn in runner.fns)


def test_reaching_the_recompile_limit_warns():
    m = dcp.compile(toy(), LOOSE, backend="eager")
    with torch._dynamo.config.patch(recompile_limit=1, automatic_dynamic_shapes=False):
        run(m, tokens=8)
        run(m, tokens=12)  # a second shape: a fresh capture of the forward (its own recompile budget)
        with pytest.warns(UserWarning, match="recompile_limit"):
            run(m, tokens=16)
