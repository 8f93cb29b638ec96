"""Public dispatching functions: backend choice, env-var forcing, shared errors."""

import pytest
import torch

import dit_cachepass.kernels as K


def test_cpu_tensors_use_the_reference_by_default():
    assert K.backend_for(torch.ones(2)) == "reference"


def test_forcing(monkeypatch):
    t = torch.ones(2)
    monkeypatch.setenv(K.ENV_VAR, "reference")
    assert K.backend_for(t) == "reference"
    monkeypatch.setenv(K.ENV_VAR, "triton")
    assert K.backend_for(t) == "triton"  # TRITON_INTERPRET=1 (conftest) permits CPU tensors
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        K.backend_for(t)
    monkeypatch.setenv(K.ENV_VAR, "cuda-please")
    with pytest.raises(ValueError, match=K.ENV_VAR):
        K.backend_for(t)
    monkeypatch.setenv(K.ENV_VAR, "auto")
    assert K.backend_for(t) == "reference"


CALLS = {
    "fused_residual_diff": lambda x: K.fused_residual_diff(x, x * 2, x),
    "rel_l1_diff": lambda x: K.rel_l1_diff(x, x + 1),
    "apply_residuals": lambda x: K.apply_residuals(x, x, x, x),
    "taylor_update": lambda x: K.taylor_update(x, [x, None], 2.0, 1, True),
    "taylor_predict_apply": lambda x: K.taylor_predict_apply([x, x], 1.5, x),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_public_functions_route_to_the_chosen_backend(monkeypatch, name, backend):
    seen = []
    for suffix in ("reference", "triton"):
        impl = getattr(K, f"{name}_{suffix}")

        def spy(*a, _impl=impl, _suffix=suffix, **kw):
            seen.append(_suffix)
            return _impl(*a, **kw)

        monkeypatch.setattr(K, f"{name}_{suffix}", spy)
    monkeypatch.setenv(K.ENV_VAR, backend)
    out = CALLS[name](torch.randn(3, 5))
    assert seen == [backend]
    # Both backends give the same answer through the public function.
    monkeypatch.setenv(K.ENV_VAR, "reference" if backend == "triton" else "triton")
    other = CALLS[name](torch.randn(3, 5))
    assert type(out) is type(other)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_zero_elements_raise_on_every_backend(monkeypatch, backend):
    monkeypatch.setenv(K.ENV_VAR, backend)
    e = torch.empty(0, 8)
    for call in CALLS.values():
        with pytest.raises(ValueError, match="0 elements"):
            call(e)


def test_results_agree_across_backends(monkeypatch):
    g = torch.Generator().manual_seed(1)
    a, b, p = (torch.randn(4, 37, generator=g, dtype=torch.bfloat16) for _ in range(3))
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv(K.ENV_VAR, backend)
        results[backend] = (
            K.fused_residual_diff(a, b, p),
            K.apply_residuals(a, b, p, a),
            K.taylor_update(a, [b, p], 2.0, 2, True),
        )
    (rr, rratio), (ra_h, ra_e), rd = results["reference"]
    (tr, tratio), (ta_h, ta_e), td = results["triton"]
    assert torch.equal(rr, tr) and torch.equal(ra_h, ta_h) and torch.equal(ra_e, ta_e)
    assert float(rratio) == pytest.approx(float(tratio), rel=1e-5)
    assert all(torch.equal(x, y) for x, y in zip(rd, td))
