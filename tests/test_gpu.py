"""GPU-only checks (skipped without CUDA; ``benchmarks/gpu.sh`` runs them on the day a GPU is
lent): the Triton kernels take the same decisions as the torch references inside a real
generation, and CUDA graphs (mode="reduce-overhead") reproduce mode="default" exactly, which
they would not if a cached residual lived in the graph pool (a replay overwrites it).

Inputs vary slowly (the zoo's FLUX drift) and the threshold is 0.5, so steps get cached on
random weights."""

import os

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.testing import zoo

# DIT_CACHEPASS_TEST_DEVICE=cpu runs the same checks on the CPU (reference kernels, Inductor
# skips CUDA graphs there): a check of the test's own logic, not of the GPU paths
DEVICE = os.environ.get("DIT_CACHEPASS_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    # tests/conftest.py turns Triton's interpreter on for the CPU suite; on a GPU it would also
    # interpret Inductor's kernels (the first GPU run failed that way), so the GPU checks need a
    # process of their own: TRITON_INTERPRET=0 pytest tests/test_gpu.py (what benchmarks/gpu.sh runs)
    pytest.mark.skipif(DEVICE == "cuda" and os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1 in this process; run TRITON_INTERPRET=0 pytest tests/test_gpu.py"),
]
CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=1)
STEPS = 8


def _generation(config=dcp.DBCacheConfig, **compile_kw):
    entry = zoo.get("flux")
    m = entry.build().to(DEVICE)
    m = dcp.compile(m, config(**CFG), **compile_kw)
    outs = []
    with torch.no_grad():
        for s in range(STEPS):
            kw = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in entry.inputs(s, STEPS).items()}
            out = m(**kw)
            out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
            outs.append(out.clone())
    return outs, dcp.summary(m).cached_steps


# DBCache's decisions read a numerator computed inside the Fn piece (fold), so its Triton use is
# the residual apply of cached steps; DBPrune's per-block decisions run the Triton diff kernel
@pytest.mark.parametrize("config", [dcp.DBCacheConfig, dcp.DBPruneConfig], ids=["dbcache", "dbprune"])
def test_triton_kernels_decide_like_the_references(monkeypatch, config):
    triton_outs, triton_cached = _generation(config)
    monkeypatch.setenv("DIT_CACHEPASS_KERNELS", "reference")
    ref_outs, ref_cached = _generation(config)
    assert triton_cached and triton_cached == ref_cached
    for a, b in zip(triton_outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_cuda_graphs_match_default_mode():
    outs, cached = _generation()
    g_outs, g_cached = _generation(mode="reduce-overhead")
    assert cached and g_cached == cached
    for a, b in zip(g_outs, outs):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
