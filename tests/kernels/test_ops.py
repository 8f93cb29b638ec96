"""The kernels as ``torch.library`` custom ops (``torch.ops.dit_cachepass.*``): opcheck on
CPU (reference path), no graph break under ``torch.compile(fullgraph=True)``, the same
results as eager, run-time backend dispatch inside compiled code, and ``torch.export``."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import dit_cachepass.kernels as K


def _t(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


DTYPES = (torch.float32, torch.bfloat16)


def _samples(dtype):
    """(op name, args) for opcheck: every optional input both given and omitted."""
    a, b, p, q = (_t(3, 37, seed=i, dtype=dtype) for i in range(4))
    e, er = _t(2, 5, 37, seed=5, dtype=dtype), _t(2, 5, 37, seed=6, dtype=dtype)
    return [
        ("fused_residual_diff", (a, b, p)),
        ("fused_residual_diff", (a, b, None)),
        ("fused_residual_diff", (a.t(), b.t(), p.t())),  # non-contiguous inputs
        ("rel_l1_diff", (a, p)),
        ("apply_residuals", (a, b, e, er)),
        ("apply_residuals", (a, b, None, None)),
        ("apply_residuals_", (a.clone(), b, e.clone(), er)),
        ("apply_residuals_", (a.clone(), b, None, None)),
        ("taylor_update", (a, [b, p, None], 2.0, 2, True)),  # two new derivatives
        ("taylor_update", (a, [b, None], 1.0, 1, True)),
        ("taylor_update", (a, [b, None], 1.0, 1, False)),  # none (no outputs)
        ("taylor_update", (a, [_t(2, 2), None], 1.0, 1, True)),  # shape change: none
        ("taylor_predict_apply", ([a, b, p], 1.5, q)),
        ("taylor_predict_apply", ([a, b], 2.0, None)),
        ("taylor_predict_apply", ([a], 1.0, None)),  # fp32: the reference would alias D0
    ]


@pytest.mark.parametrize("backend", ["reference", "triton"])  # triton: interpreted (conftest)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_opcheck_every_op(monkeypatch, dtype, backend):
    monkeypatch.setenv(K.ENV_VAR, backend)
    seen = set()
    for name, args in _samples(dtype):
        torch.library.opcheck(K.OPS[name], args)
        seen.add(name)
    assert seen == set(K.OPS)


def test_ops_are_registered_with_their_schemas():
    schemas = {name: str(op._schema) for name, op in K.OPS.items()}
    assert all(s.startswith(f"dit_cachepass::{n}(") for n, s in schemas.items())
    # Only the in-place op mutates, and exactly its two bases.
    for name, op in K.OPS.items():
        mutated = [a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        assert mutated == (["hidden", "encoder"] if name == "apply_residuals_" else []), name


def _calls(dtype):
    """Public-API calls (as a model would make them) and their inputs."""
    a, b, p, q = (_t(4, 64, seed=10 + i, dtype=dtype) for i in range(4))
    e, er = _t(4, 8, seed=20, dtype=dtype), _t(4, 8, seed=21, dtype=dtype)
    return {
        "fused_residual_diff": (lambda a, b, p: K.fused_residual_diff(a, b, p), (a, b, p)),
        "fused_residual_diff_first": (lambda a, b: K.fused_residual_diff(a, b, None), (a, b)),
        "rel_l1_diff": (lambda a, p: K.rel_l1_diff(a, p) * 2, (a, p)),
        "apply_residuals": (lambda a, b, e, er: K.apply_residuals(a, b, e, er), (a, b, e, er)),
        "apply_residuals_hidden_only": (lambda a, b: K.apply_residuals(a, b)[0] + 1, (a, b)),
        "taylor_update": (lambda a, b, p: K.taylor_update(a, [b, p, None], 2.0, 2, True), (a, b, p)),
        "taylor_predict_apply": (lambda a, b, p, q: K.taylor_predict_apply([a, b, p], 1.5, q), (a, b, p, q)),
        "taylor_predict_no_base": (lambda a, b: K.taylor_predict_apply([a, b, None], 3.0), (a, b)),
    }


def _same(x, y):
    if isinstance(x, (tuple, list)):
        assert type(x) is type(y) and len(x) == len(y)
        for u, v in zip(x, y):
            _same(u, v)
    elif x is None:
        assert y is None
    else:
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y) or (torch.isnan(x).all() and torch.isnan(y).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", sorted(_calls(torch.float32)))
def test_compiles_without_graph_break_and_matches_eager(name, dtype):
    fn, args = _calls(dtype)[name]
    expected = fn(*args)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, backend=counter)
    _same(compiled(*args), expected)
    assert counter.frame_count == 1
    # The op is one opaque node of the graph (not traced into, not a break).
    targets = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("dit_cachepass.") for t in targets), targets


def test_inplace_apply_under_compile_mutates_the_inputs():
    h, r, e, er = _t(3, 16, seed=1), _t(3, 16, seed=2), _t(2, 16, seed=3), _t(2, 16, seed=4)
    expected = K.apply_residuals(h.clone(), r, e.clone(), er)

    def step(h, r, e, er):
        out_h, out_e = K.apply_residuals(h, r, e, er, inplace=True)
        return out_h * 1, out_e * 1

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(h, r, e, er)
    _same(got, expected)
    _same((h, e), expected)  # the caller's tensors were updated


def test_dynamic_shapes_compile_once():
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda a, b, p: K.fused_residual_diff(a, b, p), fullgraph=True, backend=counter,
                       dynamic=True)
    for n in (8, 24, 40):
        a, b, p = (_t(2, n, seed=i) for i in range(3))
        _same(fn(a, b, p), K.fused_residual_diff(a, b, p))
    assert counter.frame_count == 1


def test_backend_is_chosen_at_run_time_inside_compiled_code(monkeypatch):
    """The env var is read by the op when it runs, not when the graph is traced."""
    calls = []
    for name in ("fused_residual_diff_reference", "fused_residual_diff_triton"):
        impl = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _i=impl, _n=name, **k: calls.append(_n) or _i(*a, **k))
    a, b, p = (_t(5, 33, seed=i, dtype=torch.bfloat16) for i in range(3))
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda a, b, p: K.fused_residual_diff(a, b, p), fullgraph=True, backend=counter)
    monkeypatch.setenv(K.ENV_VAR, "reference")
    ref = fn(a, b, p)
    monkeypatch.setenv(K.ENV_VAR, "triton")  # interpreted on CPU (conftest sets TRITON_INTERPRET=1)
    tri = fn(a, b, p)
    assert calls[-2:] == ["fused_residual_diff_reference", "fused_residual_diff_triton"]
    assert counter.frame_count == 1  # no recompile for the switch
    assert torch.equal(ref[0], tri[0])
    assert float(ref[1]) == pytest.approx(float(tri[1]), rel=1e-5)


def test_errors_are_raised_at_trace_time_by_the_fake_impls():
    """The fake impls run the same argument checks (dynamo wraps their error)."""
    a = _t(3, 4)
    errors = (ValueError, TypeError, torch._dynamo.exc.TorchRuntimeError)
    with pytest.raises(errors, match="shape mismatch"):
        torch.compile(lambda x, y: K.fused_residual_diff(x, y, None), fullgraph=True, backend="aot_eager")(a, _t(4, 3))
    with pytest.raises(errors, match="expected one of float32"):
        torch.compile(lambda x: K.rel_l1_diff(x, x), fullgraph=True, backend="aot_eager")(a.long())


class _CachedStep(torch.nn.Module):
    """A DBCache-like step: residual + diff, then a TaylorSeer forecast on top."""

    def forward(self, fn_out, fn_in, prev, d1):
        residual, ratio = K.fused_residual_diff(fn_out, fn_in, prev)
        forecast = K.taylor_predict_apply([residual, d1], 2.0, fn_in)
        hidden, _ = K.apply_residuals(fn_in, residual)
        return forecast, ratio, hidden


def test_torch_export_keeps_the_ops_as_nodes():
    args = tuple(_t(2, 8, 16, seed=i, dtype=torch.bfloat16) for i in range(4))
    ep = torch.export.export(_CachedStep(), args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    for op in ("fused_residual_diff", "taylor_predict_apply", "apply_residuals"):
        assert K.OPS[op] in targets, (op, targets)
    _same(ep.module()(*args), _CachedStep()(*args))


# A real-GPU check (skipped without CUDA): the Triton path inside a CUDA graph and under
# torch.compile(fullgraph=True) with inductor. Run in a subprocess without TRITON_INTERPRET
# (this directory's conftest turns the interpreter on, and interpreted kernels are neither
# capturable nor compilable). The script also runs on CPU (reference path, no graph) so
# its logic is exercised here: ``python tests/kernels/test_ops.py cpu``.
GPU_SCRIPT = r'''
import sys
import torch
import dit_cachepass.kernels as K

dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
torch.manual_seed(0)


def step(a, b, p, e, er):
    res, ratio = K.fused_residual_diff(a, b, p)
    h, enc = K.apply_residuals(a, res, e, er)
    derivs = K.taylor_update(h, [p, b, None], 2.0, 2, True)
    forecast = K.taylor_predict_apply(derivs, 1.5, a)
    return res, ratio, h, enc, derivs[1], derivs[2], forecast, K.rel_l1_diff(a, p)


def make():
    shapes = [(2, 256, 3072)] * 3 + [(2, 64, 3072)] * 2
    return [torch.randn(s, device=dev).to(torch.bfloat16) for s in shapes]


def check(got, want, exact):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape)
        if exact:
            assert torch.equal(g, w), (g - w).abs().max()
        else:
            torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=1e-2)


static = make()
if dev.type == "cuda":
    assert K.backend_for(static[0]) == "triton"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: Triton compiles here, outside the capture
        for _ in range(2):
            step(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_outs = step(*static)
    fresh = make()
    for s, f in zip(static, fresh):
        s.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    check(graph_outs, step(*fresh), exact=True)  # same kernels, same bits
    print("cuda graph ok")
inputs = make()
eager = step(*inputs)
compiled = torch.compile(step, fullgraph=True)  # inductor; the ops stay opaque
check(compiled(*inputs), eager, exact=True)
import os
os.environ[K.ENV_VAR] = "reference"
check(step(*inputs), eager, exact=False)  # Triton vs reference (on CPU: reference twice)
print("ok")
'''


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton path, CUDA graphs)")
def test_triton_ops_in_cuda_graph_and_inductor_on_gpu():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", K.ENV_VAR)}
    proc = subprocess.run([sys.executable, "-c", GPU_SCRIPT, "cuda"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "ok", proc.stdout + proc.stderr
    assert "cuda graph ok" in proc.stdout


if __name__ == "__main__":
    exec(compile(GPU_SCRIPT, "GPU_SCRIPT", "exec"), {"__name__": "gpu_script"})
