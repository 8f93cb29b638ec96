"""Differential test: dit_cachepass (graph pass) vs cache-dit 1.5.3 (runtime hooks) on a tiny FLUX.1.

Two identical FluxTransformer2DModel copies (random weights, seed 0) run the same N=8 denoising
steps: one with ``cache_dit.enable_cache(transformer, ...)`` in transformer-only mode, the other with
``dcp.compile(..., backend="eager")``. The latents drift slowly (x0 + 0.01*step) so that with a
threshold around 0.3-0.5 some post-warmup steps cache and others compute; every case asserts both.

Asserted per case: identical cached-step lists, recorded diffs equal to ~1e-4 relative, and
per-step outputs close (fp32, rtol=atol=1e-4).

Each transformer instance runs ONE generation (cache-dit 1.5.3 resets transformer-only contexts one
call late, semantics §8.1), except the multi-generation test, which calls
``cache_dit.refresh_context`` between generations on the cache-dit side.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

cache_dit = pytest.importorskip("cache_dit")
diffusers = pytest.importorskip("diffusers")

import dit_cachepass as dcp  # noqa: E402

N = 8
RTOL = ATOL = 1e-4
DIFF_RTOL = 1e-4

FLUX_TINY = dict(patch_size=1, in_channels=16, num_layers=3, num_single_layers=3, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                 axes_dims_rope=(4, 4, 8))


# --------------------------------------------------------------------------------------- helpers
def _make_flux() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(**FLUX_TINY).eval()


def _base_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 64, 16, generator=g)
    enc = torch.randn(1, 8, 32, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    return x0, enc, pooled


_X0, _ENC, _POOLED = _base_inputs()


def _inputs(step: int, generation: int = 0) -> dict:
    # Slowly drifting latents; a later generation starts from a shifted latent.
    return dict(
        hidden_states=_X0 + 0.01 * step + 0.05 * generation,
        encoder_hidden_states=_ENC,
        pooled_projections=_POOLED,
        timestep=torch.tensor([1.0 - step / N]),
        img_ids=torch.zeros(64, 3),
        txt_ids=torch.zeros(8, 3),
    )


def _cd_list_stats(blocks: torch.nn.Module) -> tuple[list[int], dict[int, float]]:
    """cache-dit per-context stats, read where cache_dit.summary reads them (apply_stats attrs)."""
    assert hasattr(blocks, "_cached_steps"), "cache-dit recorded no stats on this block list"
    return list(blocks._cached_steps), {int(k): float(v) for k, v in dict(blocks._residual_diffs).items()}


def _cd_summary_stats(transformer: torch.nn.Module) -> tuple[list[int], dict[int, float]]:
    """Stats via the public cache_dit.summary (chained layout: one context, all entries agree)."""
    stats = cache_dit.summary(transformer, logging=False)
    assert stats and stats[-1].cache_options, "cache-dit did not install a cache context"
    cached = list(stats[-1].cached_steps)
    diffs = {int(k): float(v) for k, v in stats[-1].residual_diffs.items()}
    for s in stats:  # one context only => every entry reports the same decisions
        assert list(s.cached_steps) == cached
    return cached, diffs


def _run_pair(cd_kwargs: dict, dcp_config=None, *, generations: int = 1, per_list: bool = False):
    """Run cache-dit and dit_cachepass side by side; returns (outs_cd, outs_dcp, cd_model, dcp_model)
    where outs_* is a list (per generation) of per-step outputs."""
    kw = dict(cd_kwargs, num_inference_steps=N)
    a, b = _make_flux(), _make_flux()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    cache_dit.enable_cache(a, cache_config=cache_dit.DBCacheConfig(**kw))
    if dcp_config is None:
        dcp_config = dcp.DBCacheConfig(**kw, **({"loop_layout": "per_list"} if per_list else {}))
    m = dcp.compile(b, dcp_config, backend="eager")
    assert m is b
    outs_cd, outs_dcp = [], []
    with torch.no_grad():
        for gen in range(generations):
            if gen:
                cache_dit.refresh_context(a)  # cache-dit 1.5.3 resets one call late otherwise (§8.1)
            oc, od = [], []
            for step in range(N):
                oc.append(a(**_inputs(step, gen), return_dict=False)[0])
                od.append(m(**_inputs(step, gen), return_dict=False)[0])
            outs_cd.append(oc)
            outs_dcp.append(od)
    return outs_cd, outs_dcp, a, m


def _assert_same_decisions(cd: tuple[list[int], dict[int, float]], loop, *, warmup: range):
    cd_cached, cd_diffs = cd
    assert loop.cached_steps == cd_cached, f"cached steps differ: dcp {loop.cached_steps} vs cache-dit {cd_cached}"
    ours = loop.diffs
    assert sorted(ours) == sorted(cd_diffs), f"diff steps differ: dcp {sorted(ours)} vs cache-dit {sorted(cd_diffs)}"
    for step, d in cd_diffs.items():
        assert math.isclose(ours[step], d, rel_tol=DIFF_RTOL, abs_tol=1e-6), \
            f"step {step}: diff dcp {ours[step]!r} vs cache-dit {d!r}"
    # The case must exercise both branches after warmup.
    computed_after_warmup = [s for s in range(N) if s not in cd_cached and s not in warmup]
    assert cd_cached, "no step was cached: the case does not test the cached branch"
    assert computed_after_warmup, "every post-warmup step cached: the case does not test the compute branch"


def _assert_outputs_close(outs_cd, outs_dcp):
    for gen, (oc, od) in enumerate(zip(outs_cd, outs_dcp)):
        for step, (x, y) in enumerate(zip(oc, od)):
            torch.testing.assert_close(y, x, rtol=RTOL, atol=ATOL, msg=lambda m: f"gen {gen} step {step}: {m}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The model is tiny: intra-op threads only add overhead (and oversubscribe shared CI machines).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ cases
# (cache-dit DBCacheConfig kwargs, dcp config factory or None = dcp.DBCacheConfig(**same kwargs))
CASES = {
    # FBCache (F1B0), built on our side with the FBCacheConfig helper
    "FBCache_F1B0_R0.5": (
        dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=2),
        lambda: dcp.FBCacheConfig(residual_diff_threshold=0.5, max_warmup_steps=2, num_inference_steps=N),
    ),
    "F1B1_R0.5_MC1": (
        dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=2,
             max_continuous_cached_steps=1),
        None,
    ),
    "F2B1_R0.5_M2": (
        dict(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=2,
             max_cached_steps=2),
        None,
    ),
    # warmup_interval=2: odd steps below max_warmup_steps fall through to the dynamic rules
    "F1B0_R0.35_W4I2": (
        dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.35, max_warmup_steps=4,
             warmup_interval=2),
        None,
    ),
    "F1B0_R0.5_SCM_dynamic": (
        dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=2,
             steps_computation_mask=[1, 1, 0, 1, 0, 0, 1, 0]),
        None,
    ),
    "F1B0_R0.5_ACC1.0": (
        dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=2,
             max_accumulated_residual_diff_threshold=1.0),
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_cache_dit_chained_flux(case):
    cd_kwargs, dcp_factory = CASES[case]
    outs_cd, outs_dcp, a, m = _run_pair(cd_kwargs, dcp_factory() if dcp_factory else None)
    s = dcp.summary(m)
    assert len(s.loops) == 1, f"expected ONE chained loop (cache-dit's FLUX default), got {[l.name for l in s.loops]}"
    _assert_same_decisions(_cd_summary_stats(a), s.loops[0], warmup=range(0, cd_kwargs["max_warmup_steps"], cd_kwargs.get("warmup_interval", 1)))
    assert s.cached_steps == s.loops[0].cached_steps
    _assert_outputs_close(outs_cd, outs_dcp)


def test_matches_cache_dit_per_list_flux(monkeypatch):
    """CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS=0 layout: two independently cached lists <-> loop_layout='per_list'."""
    from cache_dit.envs import ENV
    monkeypatch.setattr(ENV, "CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS", False)
    cd_kwargs = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=2)
    outs_cd, outs_dcp, a, m = _run_pair(cd_kwargs, per_list=True)
    loops = {l.name: l for l in dcp.summary(m).loops}
    assert set(loops) == {"transformer_blocks", "single_transformer_blocks"}, list(loops)
    for name in loops:
        _assert_same_decisions(_cd_list_stats(getattr(a, name)), loops[name], warmup=range(2))
    assert loops["transformer_blocks"].cached_steps != loops["single_transformer_blocks"].cached_steps, \
        "the two lists should decide independently in this case"
    _assert_outputs_close(outs_cd, outs_dcp)


def test_matches_cache_dit_two_generations_with_refresh():
    """Our pass resets on its own after num_inference_steps calls; cache-dit gets an explicit
    refresh_context between generations (avoiding its §8.1 off-by-one). Both must then agree on the
    second generation too, with nothing of generation 1 leaking into it."""
    cd_kwargs = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=2)
    outs_cd, outs_dcp, a, m = _run_pair(cd_kwargs, generations=2)
    s = dcp.summary(m)
    assert len(s.loops) == 1
    assert s.loops[0].generations == 2
    _assert_same_decisions(_cd_summary_stats(a), s.loops[0], warmup=range(2))  # stats = generation 2
    _assert_outputs_close(outs_cd, outs_dcp)


# ----------------------------------------------------------- documented deliberate differences
# docs/differences_from_cache_dit.md: same outputs, different bookkeeping.
def test_threshold_ge_1_same_outputs_no_sentinel_diffs():
    """t >= 1: both cache every post-warmup step; cache-dit records -1.0 sentinels, we record the
    real diff (issue 12: it is read at any threshold, a NaN/inf one computes)."""
    cd_kwargs = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=1.0, max_warmup_steps=2)
    outs_cd, outs_dcp, a, m = _run_pair(cd_kwargs)
    cd_cached, cd_diffs = _cd_summary_stats(a)
    loop = dcp.summary(m).loops[0]
    assert cd_cached == loop.cached_steps == list(range(2, N))
    assert set(cd_diffs.values()) == {-1.0}
    assert sorted(loop.diffs) == loop.cached_steps and all(0 <= d < float("inf") for d in loop.diffs.values())
    _assert_outputs_close(outs_cd, outs_dcp)


def test_fn_plus_bn_ge_n_same_outputs_left_uncached():
    """F + B >= N (6 chained blocks): cache-dit 'caches' an empty middle (zero residual), we leave the
    loop uncached with a warning. The outputs are identical either way."""
    cd_kwargs = dict(Fn_compute_blocks=3, Bn_compute_blocks=3, residual_diff_threshold=0.5, max_warmup_steps=1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        outs_cd, outs_dcp, a, m = _run_pair(cd_kwargs)
    assert any("leaves no middle" in str(w.message) for w in rec), [str(w.message) for w in rec]
    cd_cached, _ = _cd_summary_stats(a)
    assert cd_cached, "cache-dit is expected to record cached steps over its empty middle"
    assert dcp.summary(m).cached_steps == []
    _assert_outputs_close(outs_cd, outs_dcp)


# ------------------------------------------------------------------------------ TaylorSeer
@pytest.mark.parametrize("calibrator", ["taylorseer1", "taylorseer2", "foca"])
def test_calibrator_matches_cache_dit(calibrator):
    """Same decisions and forecasts as cache-dit's TaylorSeer / FoCa calibrators (residual cache
    type, hidden and encoder streams). 12 steps with low warmup so derivatives form and are used."""
    if calibrator == "foca":
        cd_cal, our_cal = cache_dit.FoCaCalibratorConfig(), dcp.FoCaCalibratorConfig()
    else:
        order = int(calibrator[-1])
        cd_cal = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order)
        our_cal = dcp.TaylorSeerCalibratorConfig(taylorseer_order=order)
    global N
    saved, N = N, 12
    try:
        # max_continuous_cached_steps=1 alternates compute/cache, so computed steps >= 3 form
        # derivatives that the following cached step uses
        kw = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=2,
                  max_continuous_cached_steps=1, num_inference_steps=N)
        a, b = _make_flux(), _make_flux()
        cache_dit.enable_cache(a, cache_config=cache_dit.DBCacheConfig(**kw), calibrator_config=cd_cal)
        m = dcp.compile(b, dcp.DBCacheConfig(**kw), backend="eager", calibrator_config=our_cal)
        with torch.no_grad():
            oc = [a(**_inputs(s), return_dict=False)[0] for s in range(N)]
            od = [m(**_inputs(s), return_dict=False)[0] for s in range(N)]
        cd_cached, _ = _cd_summary_stats(a)
        ours = dcp.summary(m).loops[0].cached_steps
        assert ours == cd_cached and len(ours) >= 3, (ours, cd_cached)
        assert any(s >= 4 for s in ours), "no cached step late enough to use a derivative"
        for step, (x, y) in enumerate(zip(oc, od)):
            torch.testing.assert_close(y, x, rtol=RTOL, atol=ATOL, msg=lambda m: f"step {step}: {m}")
        # the forecast is not the plain residual reuse: without the calibrator outputs differ
        plain = dcp.compile(_make_flux(), dcp.DBCacheConfig(**kw), backend="eager")
        with torch.no_grad():
            op = [plain(**_inputs(s), return_dict=False)[0] for s in range(N)]
        assert dcp.summary(plain).loops[0].cached_steps == ours
        assert max((p - y).abs().max().item() for p, y in zip(op, od)) > 1e-3
    finally:
        N = saved


# --------------------------------------------------------------------------------- DBPrune
@pytest.mark.parametrize("extra", [
    dict(),
    dict(enable_dynamic_prune_threshold=True),
    dict(non_prune_block_ids=[2], max_continuous_cached_steps=2),
])
def test_dbprune_matches_cache_dit(extra):
    """Per-block decisions inside the middle: same pruned steps, same per-step pruned-block
    counts, same outputs as cache-dit's DBPrune (one chained 6-block loop, F1B1)."""
    kw = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=2,
              num_inference_steps=N, **extra)
    a, b = _make_flux(), _make_flux()
    cache_dit.enable_cache(a, cache_config=cache_dit.DBPruneConfig(**kw))
    m = dcp.compile(b, dcp.DBPruneConfig(**kw), backend="eager")
    with torch.no_grad():
        oc = [a(**_inputs(s), return_dict=False)[0] for s in range(N)]
        od = [m(**_inputs(s), return_dict=False)[0] for s in range(N)]
    st = cache_dit.summary(a, logging=False)[-1]
    loop = dcp.summary(m).loops[0]
    assert loop.cached_steps == list(st.cached_steps), (loop.cached_steps, st.cached_steps)
    ours = [len(r.skipped) for r in loop.steps]
    assert ours == list(st.pruned_blocks), (ours, st.pruned_blocks)
    assert sum(ours) > 0, "nothing was pruned: the case does not test pruning"
    for step, (x, y) in enumerate(zip(oc, od)):
        torch.testing.assert_close(y, x, rtol=RTOL, atol=ATOL, msg=lambda msg: f"step {step}: {msg}")


# ------------------------------------------------------------------------------ separate CFG
@pytest.mark.parametrize("diff_separate", [True, False])
def test_separate_cfg_matches_cache_dit(diff_separate):
    """Two calls per step (cond, then uncond with other text embeddings): per-branch cached
    steps and every output equal cache-dit's separate-CFG contexts."""
    kw = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=2,
              enable_separate_cfg=True, cfg_diff_compute_separate=diff_separate, num_inference_steps=N)
    a, b = _make_flux(), _make_flux()
    cache_dit.enable_cache(a, cache_config=cache_dit.DBCacheConfig(**kw))
    m = dcp.compile(b, dcp.DBCacheConfig(**kw), backend="eager")
    uncond = torch.zeros_like(_ENC)
    oc, od = [], []
    with torch.no_grad():
        for s in range(N):
            for enc in (_ENC, uncond):
                x = dict(_inputs(s), encoder_hidden_states=enc)
                oc.append(a(**x, return_dict=False)[0])
                od.append(m(**x, return_dict=False)[0])
    st = cache_dit.summary(a, logging=False)[-1]
    cond, cfg = dcp.summary(m).loops
    assert cond.cached_steps == list(st.cached_steps) and cfg.cached_steps == list(st.cfg_cached_steps), \
        (cond.cached_steps, st.cached_steps, cfg.cached_steps, st.cfg_cached_steps)
    assert cond.cached_steps and cfg.cached_steps
    for i, (x, y) in enumerate(zip(oc, od)):
        torch.testing.assert_close(y, x, rtol=RTOL, atol=ATOL, msg=lambda msg: f"call {i}: {msg}")
