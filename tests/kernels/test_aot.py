"""AOT CUDA compile of the Triton kernels without a GPU (``python -m dit_cachepass.kernels.aot``),
and the roofline projection's arithmetic.

The AOT module runs in a subprocess without TRITON_INTERPRET: this directory's conftest
turns the interpreter on for the other kernel tests, and interpreted kernels cannot be
compiled for a GPU target.
"""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the AOT compile needs triton (not installed)")

from dit_cachepass.kernels import aot, roofline  # noqa: E402


SEPARATOR = "=== next run ==="
# One interpreter for both runs (importing torch + dit_cachepass dominates a run's time).
DRIVER = f"""
import sys
from dit_cachepass.kernels import aot
rcs = [aot.main(["--arch", "sm_90", "--dtype", "bf16"])]
print({SEPARATOR!r}, flush=True)
rcs.append(aot.main(["--arch", "sm_90", "--dtype", "bf16", "--kernels", "apply_residuals", "--unaligned"]))
print("rcs", *rcs)
"""


@pytest.fixture(scope="module")
def aot_runs() -> tuple[str, str, str]:
    """stdout of ``aot --arch sm_90 --dtype bf16`` (every kernel), of an ``--unaligned`` run,
    and the exit codes, from a subprocess without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and SEPARATOR in proc.stdout, proc.stdout + proc.stderr
    first, rest = proc.stdout.split(SEPARATOR + "\n")
    second, rcs = rest.rsplit("rcs ", 1)
    return first, second, rcs.strip()


def test_every_kernel_compiles_for_sm90_bf16_without_spills_and_vectorized(aot_runs):
    out, _, rcs = aot_runs
    n = len(aot._variants())
    assert rcs.split()[0] == "0", out
    assert out.strip().splitlines()[-1] == f"aot: {n}/{n} kernel variants ok", out
    rows = [line.split() for line in out.splitlines() if line.endswith(" ok") and "sm_90" in line]
    assert len(rows) == n, out
    assert all(row[-7] == "0" for row in rows), out  # spill bytes


def test_the_vector_check_catches_unaligned_specializations(aot_runs):
    """Without the divisibility-16 hints Triton emits scalar accesses: the rule must fail."""
    _, out, rcs = aot_runs
    assert rcs.split()[1] == "1", out
    assert "streaming loads are not all 128-bit" in out
    assert out.strip().splitlines()[-1] == "aot: 0/1 kernel variants ok"


def test_ptx_memory_stats_and_rule():
    ptx = "\n".join([
        "\t@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];",
        "\tld.global.L1::evict_last.v2.b64 { %rd5, %rd6 }, [ %rd2 + 0 ];",
        "\t@%p2 ld.global.b32 { %r5 }, [ %rd3 + 0 ];",
        "\t@%p1 st.global.v4.b32 [ %rd4 + 0 ], { %r1, %r2, %r3, %r4 };",
        "\t@%p3 st.global.b32 [ %rd7 + 0 ], { %r9 };",
        "\tld.shared.v4.b32 { %r1, %r2, %r3, %r4 }, [ %r7 + 0 ];",
    ])
    stats = aot.ptx_memory_stats(ptx)
    assert stats == {"ld128": 2, "ld_narrow": 1, "st128": 1, "st_narrow": 1}
    v = aot._variants()[0]  # fused_residual_diff: 2 reduction stores allowed
    ok = {"regs": 32, "spills": 0, "shared": 0, "ld128": 6, "ld_narrow": 0, "st128": 2, "st_narrow": 2}
    assert aot.check(v, ok) == []
    assert aot.check(v, {**ok, "spills": 8}) and aot.check(v, {**ok, "ld_narrow": 1})
    assert aot.check(v, {**ok, "st128": 0}) and aot.check(v, {**ok, "st_narrow": 3})


def test_variants_use_the_launchers_block_sizes():
    from dit_cachepass.kernels import residual_apply, residual_diff, taylorseer

    blocks = {v.name.split("[")[0]: v.constexprs["BLOCK"] for v in aot._variants()}
    assert blocks["fused_residual_diff"] == blocks["rel_l1_diff"] == residual_diff.DEFAULT_BLOCK
    assert blocks["ratio_finalize"] == residual_diff.DEFAULT_REDUCE_BLOCK
    assert blocks["apply_residuals"] == residual_apply.DEFAULT_BLOCK
    assert blocks["taylor_update"] == blocks["taylor_predict_apply"] == taylorseer.DEFAULT_BLOCK


def test_roofline_projection_arithmetic(capsys):
    assert roofline.flux_params() == pytest.approx(11.9e9, rel=0.01)  # FLUX.1-dev is 11.9B
    flops = roofline.flux_step_flops()
    d, n = 3072, 4608
    per_block = 24 * n * d * d + 4 * n * n * d  # linears + attention, both block kinds
    assert flops["dual blocks"] + flops["single blocks"] == pytest.approx(57 * per_block, rel=1e-3)
    calls = {c.op: c.nbytes for c in roofline.kernel_calls()}
    img = 4096 * 3072 * 2
    assert calls["fused_residual_diff"] == pytest.approx(4 * img, rel=1e-3)
    assert calls["apply_residuals"] == 3 * (4096 + 512) * 3072 * 2
    roofline.print_projection()
    out = capsys.readouterr().out
    assert out.count("projection (not measured)") == 3
    assert re.search(r"H100 SXM: 75\.\d ms per step", out)
