"""Compile time and steady time: full vs regional lowering, against torch.compile and diffusers'
regional compilation, on the demo's FLUX-shaped model (4 double + 8 single blocks).

Every variant runs in a fresh Python process with an empty Inductor cache
(``TORCHINDUCTOR_CACHE_DIR`` set to a new temporary folder), so nothing is shared between them:

  compiled            torch.compile(model), no cache
  regional            model.compile_repeated_blocks() (diffusers), no cache
  dcp_full            dit_cachepass, lowering="full" (each piece of the captured graph compiled)
  dcp_regional        dit_cachepass, lowering="regional" (graph path: one compiled graph per block
                      structure, called by every block that has it; long glue runs compiled)
  dcp_block           dit_cachepass, lowering="regional", path="block" (each block's forward
                      torch.compile'd, glue eager: the block path, the fallback of the above)

compile time = first generation - median steady generation (same inputs, same steps). With
``--repeats N`` the variants run round-robin N times (a slow spell of the machine then hits
every variant once) and the table gives medians with their min-max range. Steady times of
variants in different processes are not interleaved; the ratios there are indicative, and
``benchmarks/e2e.py`` / ``overhead.py`` interleave variants in one process.

    python benchmarks/compile_time.py [--steps 8] [--gens 3] [--repeats 1] [--threads 1] [--results]
    python benchmarks/compile_time.py --model gpu --device cuda --dtype bf16   # gpu.sh's "compile" step
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

from _results import report  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

VARIANTS = ["compiled", "regional", "dcp_full", "dcp_regional", "dcp_block"]
LABELS = {"compiled": "torch.compile (full), no cache", "regional": "diffusers compile_repeated_blocks, no cache",
          "dcp_full": "dit_cachepass lowering=full", "dcp_regional": "dit_cachepass lowering=regional",
          "dcp_block": "dit_cachepass lowering=regional, path=block"}
CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.55, max_warmup_steps=2,
           max_continuous_cached_steps=3)


def child(variant: str, steps: int, gens: int, args: argparse.Namespace) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    import dit_cachepass as dcp
    from dit_cachepass.tools.demo import denoise
    from e2e import build_inputs, build_model, on_device  # the end-to-end benchmark's models and inputs

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    inp = build_inputs(args)
    with torch.no_grad():
        ref = denoise(on_device(build_model(args), inp), inp, steps).float()
    m = build_model(args)
    if variant == "compiled":
        m = torch.compile(m)
    elif variant == "regional":
        m.compile_repeated_blocks()
    elif variant == "dcp_block":
        m = dcp.compile(m, dcp.DBCacheConfig(**CFG), lowering="regional", path="block")
    else:
        m = dcp.compile(m, dcp.DBCacheConfig(**CFG), lowering=variant.split("_")[1])
    times, out = [], None
    for _ in range(gens):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = denoise(on_device(m, inp), inp, steps).float()
        sync()
        times.append(time.perf_counter() - t0)
    cached = None
    if variant.startswith("dcp"):
        cached = len(dcp.summary(m).cached_steps)
    err = float((out - ref).abs().mean() / ref.abs().mean())
    return dict(first=times[0], steady=statistics.median(times[1:]), cached=cached, rel_l1=err)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="denoising steps per generation (default: 8)")
    p.add_argument("--gens", type=int, default=3, help="generations per variant, the first compiles (default: 3)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs of every variant (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per child (default: 1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--model", choices=["demo", "gpu"], default="demo",
                   help="demo: demo.build_flux (default); gpu: the same blocks GPU-sized (as e2e.py --model gpu)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--results", nargs="?", const="benchmarks/RESULTS.md", default=None,
                   help="append the table to RESULTS.md")
    args = p.parse_args(argv)
    if args.steps < 4 or args.gens < 2 or args.repeats < 1:
        p.error("--repeats >= 1, --steps >= 4 and --gens >= 2: the block path runs its first calls as eager probes, so with "
                "fewer steps its compile would fall into the second generation, which counts as steady")
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps, args.gens, args)))
        return
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        for v in args.variants.split(","):
            r = run_child(v, args)
            if r is not None:
                runs.setdefault(v, []).append(r)
                print(f"{v} [{rep + 1}/{args.repeats}]: {r}", file=sys.stderr)
    model = "demo.build_flux" if args.model == "demo" else "e2e.py --model gpu"
    head = (f"compile time, FLUX-shaped 4+8 blocks ({model}, {args.dtype} on {args.device}), {args.steps} steps, "
            f"fresh process and empty Inductor cache per variant and run, {args.threads} thread(s), "
            f"{os.cpu_count()} CPU(s), {args.repeats} interleaved run(s) per variant")
    report("Compile time", "CPU" if args.device == "cpu" else args.device, table(runs, head), args.results, argv)


def run_child(v: str, args: argparse.Namespace) -> Optional[dict]:
    """One variant in a fresh process with a fresh, empty Inductor cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS=str(args.threads))
        r = subprocess.run([sys.executable, __file__, "--child", v, "--steps", str(args.steps),
                            "--gens", str(args.gens), "--model", args.model, "--device", args.device,
                            "--dtype", args.dtype], env=env, capture_output=True, text=True)
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        print(f"{v}: failed\n{r.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line[7:])


def table(runs: dict[str, list[dict]], head: str) -> str:
    """Medians over runs (min-max in brackets when there are several); ratios of medians."""
    def stat(xs: list[float], fmt: str) -> str:
        m = format(statistics.median(xs), fmt)
        return m if len(xs) == 1 else f"{m} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"

    comp = {v: [r["first"] - r["steady"] for r in rs] for v, rs in runs.items()}
    steady = {v: [r["steady"] for r in rs] for v, rs in runs.items()}

    def ratio(v: str, base: str, d: dict) -> str:
        return f"{statistics.median(d[v]) / statistics.median(d[base]):.2f}" if base in d else "-"

    lines = [head, "", "| variant | compile s (first - steady) | vs torch.compile | vs compile_repeated_blocks | "
             "steady s / gen | steady vs torch.compile | cached steps | rel. L1 vs eager |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v, rs in runs.items():
        cached = rs[-1]["cached"]
        lines.append(f"| {LABELS[v]} | {stat(comp[v], '.1f')} | {ratio(v, 'compiled', comp)} | "
                     f"{ratio(v, 'regional', comp)} | {stat(steady[v], '.2f')} | {ratio(v, 'compiled', steady)} | "
                     f"{'-' if cached is None else cached} | {max(r['rel_l1'] for r in rs):.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
