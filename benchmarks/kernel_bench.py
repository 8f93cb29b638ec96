"""Microbenchmark of dit_cachepass.kernels: Triton vs the torch reference (eager and
under torch.compile), reported as effective bandwidth (bytes the op must move / time).

    python benchmarks/kernel_bench.py                       # all kernels, FLUX- and video-like sizes
    python benchmarks/kernel_bench.py --sizes flux --dtype bf16 --peak-gbps 3350
    python benchmarks/kernel_bench.py --kernels apply_residuals taylor_update

Columns: ``triton`` (the kernel launcher called directly), ``triton, graph`` (the same
calls replayed from a CUDA graph: device time without launch cost, the number to hold against
the bandwidth roofline; the first GPU run showed the per-call timing is launch-bound at these
sizes), ``public op`` (the public
function, i.e. the ``torch.ops.dit_cachepass`` custom op with its run-time backend
dispatch: the difference to ``triton`` is the op's Python/dispatcher overhead), the torch
reference eager and under ``torch.compile``, and the Triton speedup against both. Every
timing cell gives microseconds, effective GB/s (bytes the op must move / time) and, when a
peak is known (``--peak-gbps`` or the device name), the fraction of peak bandwidth.

On a machine without CUDA only the reference paths run (eager, compiled, public op), on
one reduced size so the run stays under a minute; the table says so. No GPU numbers are
made up: a Triton column is only printed when it was measured.
"""

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

try:
    import dit_cachepass.kernels as K
except ImportError:  # running from a checkout without the package installed
    import types

    # a bare package object for dit_cachepass (its __init__ is not run), so that only the
    # kernels subpackage is imported from the checkout
    _root = Path(__file__).resolve().parents[1]
    _pkg = types.ModuleType("dit_cachepass")
    _pkg.__path__ = [str(_root / "dit_cachepass")]
    sys.modules.setdefault("dit_cachepass", _pkg)
    import dit_cachepass.kernels as K

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (batch, tokens, dim) of the image/video stream; the text stream has ENCODER_TOKENS tokens.
SIZES_GPU = {"flux": (1, 4096, 3072), "video": (1, 32760, 3072)}
SIZES_CPU = {"flux": (1, 256, 3072), "video": (1, 1024, 3072)}
ENCODER_TOKENS = {"flux": 512, "video": 512}
ENCODER_TOKENS_CPU = {"flux": 32, "video": 32}
DEFAULT_SIZES_CPU = ["flux"]  # keeps the CPU run (incl. inductor compiles) under a minute
TAYLOR_ORDER = 2
KERNELS = ("fused_residual_diff", "rel_l1_diff", "apply_residuals", "taylor_update", "taylor_predict_apply")


def default_peak_gbps(device: torch.device) -> float | None:
    """Datasheet HBM bandwidth by device name; None when unknown (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H200" in name:
        return 4800.0
    if "H100" in name:
        return 2000.0 if "PCIe" in name else 3350.0
    return None


@dataclass
class Op:
    name: str
    bytes_moved: int
    triton: Callable[[], object]
    reference: Callable[[], object]
    compiled: Callable[[], object]
    public: Callable[[], object]


def build_ops(kind: str, shape: tuple[int, int, int], enc_tokens: int, dtype: torch.dtype,
              device: torch.device, wanted: list[str], compile_ref: bool) -> list[Op]:
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(s, generator=g, device=device, dtype=torch.float32).to(dtype)

    n = math.prod(shape)
    es = torch.tensor([], dtype=dtype).element_size()
    b, _, d = shape
    fn_out, fn_in, prev = rnd(*shape), rnd(*shape), rnd(*shape)
    enc, enc_res = rnd(b, enc_tokens, d), rnd(b, enc_tokens, d)
    n_e = enc.numel()
    ladder = [rnd(*shape) for _ in range(TAYLOR_ORDER + 1)]

    def compiled(fn: Callable) -> Callable:
        return torch.compile(fn, dynamic=False) if compile_ref else fn

    c_diff = compiled(K.fused_residual_diff_reference)
    c_rel = compiled(K.rel_l1_diff_reference)
    c_apply = compiled(K.apply_residuals_reference)
    c_update = compiled(K.taylor_update_reference)
    c_predict = compiled(K.taylor_predict_apply_reference)

    ops = [
        Op("fused_residual_diff", 4 * n * es,  # read out/in/prev, write residual
           lambda: K.fused_residual_diff_triton(fn_out, fn_in, prev),
           lambda: K.fused_residual_diff_reference(fn_out, fn_in, prev),
           lambda: c_diff(fn_out, fn_in, prev),
           lambda: K.fused_residual_diff(fn_out, fn_in, prev)),
        Op("rel_l1_diff", 2 * n * es,
           lambda: K.rel_l1_diff_triton(fn_out, prev),
           lambda: K.rel_l1_diff_reference(fn_out, prev),
           lambda: c_rel(fn_out, prev),
           lambda: K.rel_l1_diff(fn_out, prev)),
        Op("apply_residuals", 3 * (n + n_e) * es,  # hidden + encoder streams: read x, r; write out
           lambda: K.apply_residuals_triton(fn_out, prev, enc, enc_res),
           lambda: K.apply_residuals_reference(fn_out, prev, enc, enc_res),
           lambda: c_apply(fn_out, prev, enc, enc_res),
           lambda: K.apply_residuals(fn_out, prev, enc, enc_res)),
        Op(f"taylor_update (order {TAYLOR_ORDER})", (1 + 2 * TAYLOR_ORDER) * n * es,  # read Y, P0..; write D1..
           lambda: K.taylor_update_triton(fn_out, ladder, 2.0, TAYLOR_ORDER, True),
           lambda: K.taylor_update_reference(fn_out, ladder, 2.0, TAYLOR_ORDER, True),
           lambda: c_update(fn_out, ladder, 2.0, TAYLOR_ORDER, True),
           lambda: K.taylor_update(fn_out, ladder, 2.0, TAYLOR_ORDER, True)),
        Op(f"taylor_predict_apply (order {TAYLOR_ORDER})", (TAYLOR_ORDER + 3) * n * es,  # read D0.., base; write
           lambda: K.taylor_predict_apply_triton(ladder, 1.5, fn_in),
           lambda: K.taylor_predict_apply_reference(ladder, 1.5, fn_in),
           lambda: c_predict(ladder, 1.5, fn_in),
           lambda: K.taylor_predict_apply(ladder, 1.5, fn_in)),
    ]
    return [op for op in ops if op.name.split(" ")[0] in wanted]


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_graph(fn: Callable[[], object], device: torch.device, iters: int, reps: int = 10) -> float | None:
    """Median seconds per call of ``reps`` calls captured in one CUDA graph: device time only.
    ``time_fn`` times one call between two events, so when launching (Python, allocations,
    Triton's launcher) takes longer than the kernel, it measures the launch; this does not.
    None when the call cannot be captured."""
    if device.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        graph.replay()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / reps)
        return statistics.median(times)
    except Exception as err:  # a capture failure is reported as a missing cell, not a crash
        print(f"graph capture failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def fmt_cell(seconds: float | None, nbytes: int, peak: float | None) -> str:
    if seconds is None:
        return "-"
    gbps = nbytes / seconds / 1e9
    cell = f"{seconds * 1e6:,.0f} us  {gbps:,.{0 if gbps >= 100 else 1}f} GB/s"
    if peak:
        cell += f" ({gbps / peak:.0%})"
    return cell


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in headers:
            table.add_column(h, justify="left" if h in ("kernel", "size") else "right")
        for row in rows:
            table.add_row(*row)
        Console(width=200).print(table)
    except ImportError:
        print(title)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES_GPU),
                   help="FLUX-like 1x4096x3072 and/or video-like 1x32760x3072 (default both; "
                        "CPU: 1x256x3072 / 1x1024x3072, default flux only)")
    p.add_argument("--tokens", type=int, help="override the token count of every size (e.g. for a quick run)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--iters", type=int, help="timed calls per measurement (default 50 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed calls first, compilation happens here (default 3 on GPU, 1 on CPU)")
    p.add_argument("--peak-gbps", type=float, help="peak memory bandwidth for the %% column "
                   "(default by device name: H100 SXM 3350, H100 PCIe 2000, H200 4800, else not shown)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    run_triton = on_gpu and K.HAS_TRITON
    dtype = DTYPES[args.dtype]
    iters = args.iters or (50 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    size_names = args.sizes or (sorted(SIZES_GPU) if on_gpu else DEFAULT_SIZES_CPU)
    peak = args.peak_gbps or default_peak_gbps(device)
    dev_name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    sizes = SIZES_GPU if on_gpu else SIZES_CPU
    enc_tokens = ENCODER_TOKENS if on_gpu else ENCODER_TOKENS_CPU

    if not on_gpu:
        print(f"No CUDA device: timing the torch reference only (eager, torch.compile, and through the public "
              f"custom op) on CPU, "
              f"with reduced sizes {', '.join(f'{k}={sizes[k]}' for k in size_names)}. "
              f"Triton kernels need a GPU; no Triton numbers are shown.")
    elif not K.HAS_TRITON:
        print("triton is not installed: timing the torch reference only.")

    headers = ["kernel", "size", "MB moved"]
    if run_triton:
        headers += ["triton", "triton, graph"]
    headers.append("public op")
    headers.append("reference eager")
    if not args.no_compile:
        headers.append("reference compiled")
    if run_triton:
        headers.append("triton vs eager")
        if not args.no_compile:
            headers.append("triton vs compiled")
    rows = []
    for kind in size_names:
        shape = sizes[kind]
        if args.tokens:
            shape = (shape[0], args.tokens, shape[2])
        ops = build_ops(kind, shape, enc_tokens[kind], dtype, device, args.kernels, not args.no_compile)
        for op in ops:
            t_tri = time_fn(op.triton, device, warmup, iters) if run_triton else None
            t_graph = time_graph(op.triton, device, iters) if run_triton else None
            t_pub = time_fn(op.public, device, warmup, iters)
            t_ref = time_fn(op.reference, device, warmup, iters)
            t_cmp = None if args.no_compile else time_fn(op.compiled, device, warmup, iters)
            row = [op.name, f"{kind} {'x'.join(map(str, shape))}", f"{op.bytes_moved / 1e6:,.1f}"]
            if run_triton:
                row += [fmt_cell(t_tri, op.bytes_moved, peak), fmt_cell(t_graph, op.bytes_moved, peak)]
            row.append(fmt_cell(t_pub, op.bytes_moved, peak))
            row.append(fmt_cell(t_ref, op.bytes_moved, peak))
            if not args.no_compile:
                row.append(fmt_cell(t_cmp, op.bytes_moved, peak))
            if run_triton:
                row.append(f"{t_ref / t_tri:.2f}x")
                if t_cmp is not None:
                    row.append(f"{t_cmp / t_tri:.2f}x")
            rows.append(row)
    peak_txt = f"peak {peak:,.0f} GB/s" if peak else "peak bandwidth unknown (pass --peak-gbps)"
    print_table(f"dit_cachepass kernels on {dev_name}, {args.dtype}, median of {iters}; {peak_txt}", headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
