"""Caching under diffusers' context / tensor parallelism: decisions, fidelity and cost.

The demo's FLUX-shaped model (``demo.build_flux``, random weights) denoises ``--steps`` steps
in four ways, all in one run with the same weights and inputs:

  single            1 process, no cache (the model as it is, or torch.compile'd with --backend)
  single_cached     1 process, dit_cachepass DBCache
  parallel          --world gloo ranks under diffusers' parallelism (--kind), no cache
  parallel_cached   the same ranks, ``dcp.enable_cache(parallelism_config=...)`` (decisions
                    synced over the mesh)

Each rank gets ``--threads`` CPU threads (the single-process runs too), so on a machine with
fewer cores than ``world x threads`` the parallel rows measure contention, not scaling: read
the speedup within each pair of rows, not parallel against single. The table also
reports every rank's cached steps, the time spent in the decision all-reduce, and the largest
difference between the parallel cached output and the single-process cached one.

On CPU, diffusers 0.42.1 refuses to parallelize (it assumes an accelerator); the ranks lift
those placement checks as the tests do (``tests/dist_worker.py``). Ring attention needs a GPU
attention backend, so ``--kind ring`` fails on CPU.

Usage:  python benchmarks/parallel.py [--kind ulysses|ring|tp] [--world 2] [--steps 20]
                                      [--backend eager|aot_eager|inductor] [--results [PATH]]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import socket
import statistics
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dit_cachepass as dcp
from dit_cachepass.tools.demo import build_flux, denoise, make_inputs
from dit_cachepass.runtime import middle

HERE = os.path.dirname(os.path.abspath(__file__))


def make_model(args: argparse.Namespace, cached: bool, parallel: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_flux()
    if cached:
        cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=args.threshold,
                                max_warmup_steps=4, max_continuous_cached_steps=2)
        return dcp.enable_cache(model, cfg, parallelism_config=parallelism(args) if parallel else None,
                                backend=args.backend, strict=True)
    if parallel:
        from dit_cachepass.runtime.parallel import enable_parallelism

        enable_parallelism(model, parallelism(args))
    return model if args.backend == "eager" else torch.compile(model, backend=args.backend)


def cached_steps(model: torch.nn.Module) -> list[int]:
    return dcp.summary(model).cached_steps if hasattr(model, "_dit_cachepass") else []


def timed_generations(model: torch.nn.Module, args: argparse.Namespace, barrier=None) -> tuple[float, torch.Tensor]:
    """Median wall seconds per generation after one untimed (compiling) generation."""
    inp = make_inputs()
    out = denoise(model, inp, args.steps)
    times = []
    for _ in range(args.repeats):
        if barrier is not None:
            barrier()
        t0 = time.perf_counter()
        out = denoise(model, inp, args.steps)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def parallelism(args: argparse.Namespace) -> dcp.ParallelismConfig:
    size = {"ulysses": "ulysses_size", "ring": "ring_size", "tp": "tp_size"}[args.kind]
    return dcp.ParallelismConfig(**{size: args.world})


def rank_worker(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from dist_worker import allow_diffusers_parallelism_on_cpu

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.set_num_threads(args.threads)
    allow_diffusers_parallelism_on_cpu()
    sync_seconds = [0.0]
    inner = middle._global_ratio

    def timed_ratio(*a):  # the decision all-reduce, timed
        t0 = time.perf_counter()
        try:
            return inner(*a)
        finally:
            sync_seconds[0] += time.perf_counter() - t0

    middle._global_ratio = timed_ratio
    result = {}
    for cached in (False, True):
        m = make_model(args, cached, parallel=True)
        sync_seconds[0] = 0.0
        seconds, out = timed_generations(m, args, barrier=dist.barrier)
        name = "parallel_cached" if cached else "parallel"
        result[name] = dict(seconds=seconds, cached=cached_steps(m), sync=sync_seconds[0] / (args.repeats + 1),
                            out=out.tolist())
    queue.put((rank, result))
    dist.barrier()
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()  # the result has reached the pipe
    os._exit(0)  # skip teardown: gloo's threads sometimes abort there (see tests/dist_worker.py)


def run_ranks(args: argparse.Namespace) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_worker, args=(r, args, port, queue)) for r in range(args.world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=args.timeout) for _ in procs)
    for p in procs:
        p.join()
    return [results[r] for r in range(args.world)]


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["ulysses", "ring", "tp"], default="ulysses")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="timed generations (median reported)")
    p.add_argument("--threshold", type=float, default=0.5, help="DBCache F1B0 threshold (random weights: ~0.5)")
    p.add_argument("--backend", choices=["eager", "aot_eager", "inductor"], default="eager")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--results", nargs="?", const=os.path.join(HERE, "RESULTS.md"), default=None,
                   help="append the table to RESULTS.md (or PATH)")
    p.add_argument("--machine", default=f"CPU, torch {torch.__version__}")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    rows = {}
    for cached in (False, True):
        m = make_model(args, cached, parallel=False)
        seconds, out = timed_generations(m, args)
        rows["single_cached" if cached else "single"] = dict(seconds=seconds, cached=cached_steps(m), out=out)
    ranks = run_ranks(args)

    ref = rows["single_cached"]["out"]
    lines = [f"Parallel caching ({args.kind} x {args.world} gloo ranks, {args.threads} thread(s) each, "
             f"{args.steps} steps, backend={args.backend}, DBCache F1B0 R{args.threshold}), "
             f"{datetime.date.today().isoformat()}, {args.machine}",
             f"`python benchmarks/parallel.py {shlex.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| variant | s / generation | speedup vs uncached | cached steps (per rank) | decision sync s / gen "
             "| max abs diff vs single cached |", "|---|---|---|---|---|---|"]
    lines.append(f"| single | {rows['single']['seconds']:.3f} | | - | | |")
    lines.append(f"| single_cached | {rows['single_cached']['seconds']:.3f} | "
                 f"{rows['single']['seconds'] / rows['single_cached']['seconds']:.2f}x | "
                 f"{rows['single_cached']['cached']} | | 0 |")
    base = max(r["parallel"]["seconds"] for r in ranks)
    lines.append(f"| parallel | {base:.3f} | | - | | |")
    secs = max(r["parallel_cached"]["seconds"] for r in ranks)
    diff = max((torch.tensor(r["parallel_cached"]["out"]) - ref).abs().max().item() for r in ranks)
    cached = " / ".join(str(r["parallel_cached"]["cached"]) for r in ranks)
    sync = max(r["parallel_cached"]["sync"] for r in ranks)
    lines.append(f"| parallel_cached | {secs:.3f} | {base / secs:.2f}x | {cached} | {sync:.4f} | {diff:.2e} |")
    table = "\n".join(lines)
    print(table)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + table + "\n")
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
