"""Ahead-of-time CUDA compile of every Triton kernel, with no GPU needed.

    python -m dit_cachepass.kernels.aot                      # all kernels x fp32/fp16/bf16 x sm_80/sm_90
    python -m dit_cachepass.kernels.aot --arch sm_90 --dtype bf16
    python -m dit_cachepass.kernels.aot --roofline           # also print the roofline projection

Each variant goes through Triton's full CUDA pipeline (TTIR -> TTGIR -> LLVM -> PTX ->
cubin with the ``ptxas`` that Triton ships) for a ``GPUTarget("cuda", 80|90, 32)``, with
the specialization the JIT gives real launches: every pointer and every integer size
argument gets ``tt.divisibility=16`` (torch's allocations are 16-byte aligned, and the
FLUX/video sizes are multiples of 16), the constexprs (tile ``BLOCK``, ``num_warps``)
are the launchers' defaults (``DEFAULT_BLOCK`` & co., read from the kernel modules), and
``EMULATE_RNE`` is off as on a GPU. One table row per variant: registers and spill
bytes (``ptxas -v``), static shared memory, and the PTX's global memory instructions:
128-bit loads/stores (``ld.global.v4.b32``, ``.v2.b64`` or ``.b128``), and narrower
("scalar": plain or 32/64-bit vector) ones.

Pass/fail rule (exit status 1 if any variant fails; last line ``aot: N/M kernel variants ok``):
  * it compiles for the target, and ``ptxas`` reports 0 bytes of spill stores/loads;
  * *streaming* accesses, those that walk a tensor's elements (``ptr + offs`` over a
    tile), are all 128-bit: every global load must be 128-bit and there must be at
    least one (all loads in these kernels stream: the three inputs of the residual
    diff, the ladders, and the finalize kernel's read of the partial-sum buffer), and
    a variant that writes an elementwise output must store it with 128-bit stores;
  * the only narrow stores allowed are a variant's *reduction outputs*, which are one
    scalar per program by nature: the two partial sums of ``_diff_partials_kernel``
    (when it has a ``prev``) and the 0-d ratio of ``_ratio_finalize_kernel``. Each
    variant declares how many such outputs it has and may emit at most that many
    narrow ``st.global`` instructions.
The finalize kernel's inputs are fp32 partial sums whatever the model dtype, so it is
compiled once per arch (dtype column ``fp32*``).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from . import residual_apply as ra
from ._utils import _table
from . import residual_diff as rd
from . import taylorseer as ts

DTYPES = ("fp32", "fp16", "bf16")
ARCHS = {"sm_80": 80, "sm_90": 90}
OK_LINE = "aot: {ok}/{total} kernel variants ok"


@dataclass
class Variant:
    """One (kernel, constexpr) specialization, as its launcher runs it."""

    name: str
    kernel: object  # the @triton.jit function
    args: dict[str, str]  # non-constexpr arg -> "ptr", "ptr32" (always fp32), "int" or "float"
    constexprs: dict[str, object]
    num_warps: int
    writes_stream: bool  # has an elementwise (streaming) output
    reduction_stores: int = 0  # narrow st.global allowed (one-scalar-per-program outputs)
    dtype_free: bool = False  # inputs do not depend on the model dtype


def _variants() -> list[Variant]:
    diff_args = {"a_ptr": "ptr", "b_ptr": "ptr", "prev_ptr": "ptr", "res_ptr": "ptr",
                 "partial_ptr": "ptr32", "n_elements": "int", "num_programs": "int"}
    diff_warps = rd.partials_num_warps(rd.DEFAULT_BLOCK)
    apply_args = {"h_ptr": "ptr", "hr_ptr": "ptr", "ho_ptr": "ptr", "n_h": "int", "blocks_h": "int",
                  "e_ptr": "ptr", "er_ptr": "ptr", "eo_ptr": "ptr", "n_e": "int"}
    update_args = {"y_ptr": "ptr", **{f"p{i}_ptr": "ptr" for i in range(4)},
                   **{f"o{i}_ptr": "ptr" for i in range(1, 5)}, "n_elements": "int", "window": "float"}
    predict_args = {**{f"d{i}_ptr": "ptr" for i in range(5)}, **{f"c{i}": "float" for i in range(1, 5)},
                    "base_ptr": "ptr", "out_ptr": "ptr", "n_elements": "int"}
    rep = 2  # representative TaylorSeer order (benchmarks/kernel_bench.py); MAX_ORDER = worst case
    return [
        Variant("fused_residual_diff", rd._diff_partials_kernel, diff_args,
                dict(HAS_B=True, HAS_PREV=True, WRITE_RES=True, EMULATE_RNE=False, BLOCK=rd.DEFAULT_BLOCK),
                diff_warps, writes_stream=True, reduction_stores=2),
        Variant("fused_residual_diff[no prev]", rd._diff_partials_kernel, diff_args,
                dict(HAS_B=True, HAS_PREV=False, WRITE_RES=True, EMULATE_RNE=False, BLOCK=rd.DEFAULT_BLOCK),
                diff_warps, writes_stream=True),
        Variant("rel_l1_diff", rd._diff_partials_kernel, diff_args,
                dict(HAS_B=False, HAS_PREV=True, WRITE_RES=False, EMULATE_RNE=False, BLOCK=rd.DEFAULT_BLOCK),
                diff_warps, writes_stream=False, reduction_stores=2),
        Variant("ratio_finalize", rd._ratio_finalize_kernel,
                {"partial_ptr": "ptr32", "ratio_ptr": "ptr32", "num_partials": "int"},
                dict(BLOCK=rd.DEFAULT_REDUCE_BLOCK), rd.FINALIZE_WARPS, writes_stream=False,
                reduction_stores=1, dtype_free=True),
        Variant("apply_residuals", ra._apply_residuals_kernel, apply_args,
                dict(HAS_E=True, EMULATE_RNE=False, BLOCK=ra.DEFAULT_BLOCK),
                ra.apply_num_warps(ra.DEFAULT_BLOCK), writes_stream=True),
        *[Variant(f"taylor_update[order {k}]", ts._taylor_update_kernel, update_args,
                  dict(N_NEW=k, EMULATE_RNE=False, BLOCK=ts.DEFAULT_BLOCK), ts.NUM_WARPS, writes_stream=True)
          for k in (rep, ts.MAX_ORDER)],
        *[Variant(f"taylor_predict_apply[order {k}]", ts._taylor_predict_kernel, predict_args,
                  dict(N_TERMS=k + 1, HAS_BASE=True, EMULATE_RNE=False, BLOCK=ts.DEFAULT_BLOCK), ts.NUM_WARPS,
                  writes_stream=True)
          for k in (rep, ts.MAX_ORDER)],
    ]


# --------------------------------------------------------------------------- PTX stats
_MEM_RE = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*)")
_ELEM_BITS = re.compile(r"\.[bfsu](8|16|32|64|128)\b")


def ptx_memory_stats(ptx: str) -> dict[str, int]:
    """Counts of 128-bit and narrower global loads/stores in ``ptx``."""
    stats = {"ld128": 0, "ld_narrow": 0, "st128": 0, "st_narrow": 0}
    for line in ptx.splitlines():
        m = _MEM_RE.search(line)
        if not m:
            continue
        mods = m.group(2)
        vec = 4 if ".v4" in mods else 2 if ".v2" in mods else 8 if ".v8" in mods else 1
        bits = _ELEM_BITS.findall(mods)
        width = vec * int(bits[-1]) if bits else 0
        stats[f"{m.group(1)}{'128' if width >= 128 else '_narrow'}"] += 1
    return stats


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes stores+loads) from ``ptxas -v`` (Triton's bundled ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src,
                               "-o", os.path.join(tmp, "k.o")], capture_output=True, text=True, check=True)
    log = proc.stdout + proc.stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return regs, spills


# --------------------------------------------------------------------------- compile
def compile_variant(v: Variant, dtype: str, arch: int, aligned: bool = True) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(v.kernel.arg_names)
    signature, attrs = {}, {}
    for i, name in enumerate(params):
        if name in v.constexprs:
            signature[name] = "constexpr"
            continue
        kind = v.args[name]
        signature[name] = {"ptr": f"*{dtype}", "ptr32": "*fp32", "int": "i32", "float": "fp32"}[kind]
        if aligned and kind != "float":  # 16-byte aligned pointers, sizes that are multiples of 16
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(v.kernel, signature, constexprs=dict(v.constexprs), attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps})
    ptx = compiled.asm["ptx"]
    regs, spills = ptxas_usage(ptx, arch)
    return {"regs": regs, "spills": spills, "shared": compiled.metadata.shared, **ptx_memory_stats(ptx)}


def check(v: Variant, r: dict) -> list[str]:
    """The module docstring's rule; returns the reasons a variant fails (empty = ok)."""
    problems = []
    if r["spills"]:
        problems.append(f"{r['spills']} bytes of register spills")
    if r["ld_narrow"] or not r["ld128"]:
        problems.append("streaming loads are not all 128-bit")
    if v.writes_stream and not r["st128"]:
        problems.append("elementwise output not stored with 128-bit stores")
    if r["st_narrow"] > v.reduction_stores:
        problems.append(f"{r['st_narrow']} narrow stores (reduction outputs: {v.reduction_stores})")
    return problems


def _check_triton() -> str | None:
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return "triton is not installed"
    if not isinstance(rd._diff_partials_kernel, JITFunction):
        return ("the kernels were defined under TRITON_INTERPRET=1 (interpreter functions cannot be "
                "compiled); run without TRITON_INTERPRET")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--kernels", nargs="+", help="only variants whose name starts with one of these")
    p.add_argument("--unaligned", action="store_true",
                   help="drop the divisibility-16 hints (what an odd-sized or offset tensor gets): shows that "
                        "the vector check fails then; not a supported configuration")
    p.add_argument("--roofline", action="store_true", help="also print the FLUX.1-dev roofline projection")
    args = p.parse_args(argv)
    jobs = []
    for v in _variants():
        if args.kernels and not any(v.name.startswith(k) for k in args.kernels):
            continue
        for arch in args.arch:
            for dtype in (["fp32"] if v.dtype_free else args.dtype):
                jobs.append((v, dtype, arch))
    why = _check_triton()
    if why:
        print(f"aot: cannot compile: {why}")
        print(OK_LINE.format(ok=0, total=len(jobs)))
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default; silences 3.9's warning
    rows, ok, failures = [], 0, []
    headers = ["kernel", "dtype", "arch", "warps", "BLOCK", "regs", "spill B", "smem B",
               "ld128", "ld narrow", "st128", "st narrow", "status"]
    for v, dtype, arch in jobs:
        label = f"{v.name} {dtype} {arch}"
        try:
            r = compile_variant(v, dtype, ARCHS[arch], aligned=not args.unaligned)
        except Exception as exc:  # noqa: BLE001 - report every failure, then exit non-zero
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append(f"{label}: compile failed: {type(exc).__name__}: {msg}")
            rows.append([v.name, dtype + ("*" if v.dtype_free else ""), arch, str(v.num_warps),
                         str(v.constexprs["BLOCK"])] + ["-"] * 7 + ["FAIL"])
            continue
        problems = check(v, r)
        ok += not problems
        failures += [f"{label}: {p}" for p in problems]
        rows.append([v.name, dtype + ("*" if v.dtype_free else ""), arch, str(v.num_warps), str(v.constexprs["BLOCK"]),
                     str(r["regs"]), str(r["spills"]), str(r["shared"]), str(r["ld128"]), str(r["ld_narrow"]),
                     str(r["st128"]), str(r["st_narrow"]), "ok" if not problems else "FAIL"])
    print(_table(headers, rows))
    print("* fp32 partial sums whatever the model dtype. 128 = 128-bit vector accesses; narrow = narrower "
          "(scalar or 32/64-bit vector). Pass/fail rule: docstring of dit_cachepass/kernels/aot.py.")
    for f in failures:
        print("FAIL " + f)
    if args.roofline:
        from .roofline import print_projection

        print()
        print_projection()
    print(OK_LINE.format(ok=ok, total=len(jobs)))
    return 0 if ok == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
