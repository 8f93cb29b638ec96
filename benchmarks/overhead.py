"""Host overhead per forward: what dit_cachepass's runner adds to a compiled forward.

A tiny FLUX (4 double + 8 single blocks, inner dim 32, 16 image + 8 text tokens) has almost no
compute, so the time per forward is dispatch, guards and the runner's own Python work: the part
that bounds a fast GPU. Variants (all backend="inductor"):

  plain        torch.compile(model), no cache
  computed     dit_cachepass, every step computed (threshold 1e-9: the decision still runs)
  cached       dit_cachepass, every step after the first cached (threshold 1e9, no limits)
  cachedit     cache-dit 1.5.3 DBCache (same F/B, every step computed) + torch.compile
  regional     dit_cachepass, lowering="regional", every step computed (only with --regional)
  regional_block  the same on the block path (path="block": each block torch.compile'd)
  repeated     diffusers' compile_repeated_blocks (each block class compiled, glue eager), no cache
  unfolded     "computed" with the cache's tensor work done eagerly (as before ``fold``; on request)

Every variant runs --calls forwards per round; variants are interleaved round-robin for
--rounds rounds (many short rounds: a VM's speed swings within a second, and a ratio taken
within one short round sees one speed); the table gives the median microseconds per forward
and, per variant, the median ratio to ``plain`` measured in the same round with its 10-90 %
range over rounds, in wall time and in process CPU time (which a busy or oversubscribed machine
disturbs much less).

    python benchmarks/overhead.py [--rounds 120] [--calls 10] [--threads 1] [--results]
    python benchmarks/overhead.py --device cuda --profile     # + where the host time goes
    python benchmarks/overhead.py --breakdown --rounds 10      # + compiled code vs the Python around it

``--profile`` then runs every variant under torch.profiler for a few calls and prints, per
forward, the device kernels launched and the host operators by self CPU time: on a GPU, where a
launch-bound forward's cost is the number of launches times their host cost, it says which
launches a variant adds (the first H200 run measured +720 µs per computed step without this).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")

import torch  # noqa: E402

import dit_cachepass as dcp  # noqa: E402
from _results import report  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

F, B = 1, 0


DEVICE = "cpu"


def build(seed: int = 0) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=4, num_single_layers=8, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
    ).eval().to(DEVICE)


def inputs(n_calls: int) -> tuple[dict, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3).float()
    kw = dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
              pooled_projections=torch.randn(1, 32, generator=g), img_ids=img_ids, txt_ids=torch.zeros(8, 3),
              return_dict=False)
    kw = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    # strictly decreasing timesteps: one long generation (a repeated timestep starts a new one)
    n = max(n_calls * 1000, 20000)
    ts = [torch.tensor([1.0 - i / n], device=DEVICE) for i in range(n)]
    return kw, ts


def make(key: str) -> Callable:
    m = build()
    if key == "plain":
        return torch.compile(m, backend="inductor")
    if key in ("computed", "cached", "regional", "regional_block", "unfolded"):
        thr = 1e9 if key == "cached" else 1e-9
        cfg = dcp.DBCacheConfig(Fn_compute_blocks=F, Bn_compute_blocks=B, residual_diff_threshold=thr,
                                max_warmup_steps=0)
        kw = {"regional": {"lowering": "regional"}, "regional_block": {"lowering": "regional", "path": "block"}
              }.get(key, {})
        return dcp.compile(m, cfg, backend="inductor", **kw)
    if key == "repeated":
        m.compile_repeated_blocks(backend="inductor")
        return m
    if key == "cachedit":
        import cache_dit

        cache_dit.enable_cache(m, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=F, Bn_compute_blocks=B, residual_diff_threshold=1e-9, max_warmup_steps=0))
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 1024)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 8192)
        return torch.compile(m, backend="inductor")
    raise ValueError(key)


@contextlib.contextmanager
def _unfolded(active: bool):
    """Compile without ``fold`` (the pass runs on the first call)."""
    import dit_cachepass.backend as backend

    fold = backend.fold
    if active:
        backend.fold = lambda prog: prog
    try:
        yield
    finally:
        backend.fold = fold


def breakdown(kw: dict, it, rounds: int = 20, calls: int = 50) -> str:
    """Where a computed step's extra time goes, plain torch.compile against dit_cachepass: the
    host time inside compiled code (every compiled graph or piece call timed), the time around
    it (dynamo's guards, module wrappers, the runner), and the same forward with every compiled
    call replaced by a replay of its recorded outputs (no kernels: the host Python alone)."""
    from torch._inductor.compile_fx import compile_fx

    inside = [0.0]
    replay: dict[int, Any] = {}
    mode = {"replay": False}

    def timed(k: int, fn: Callable) -> Callable:
        def call(*a):
            if mode["replay"] and k in replay:
                return replay[k]
            t = time.perf_counter()
            out = replay[k] = fn(*a)
            inside[0] += time.perf_counter() - t
            return out
        return call

    ids = itertools.count()
    plain = torch.compile(build(), backend=lambda gm, ex: timed(next(ids), compile_fx(gm, ex)))
    computed = make("computed")
    sync = torch.cuda.synchronize if DEVICE.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for f in (plain, computed):
            for _ in range(3):
                f(timestep=next(it), **kw)
        runner = dcp.api._session(computed).runners[-1]
        runner.fns = [timed(next(ids), fn) for fn in runner.fns]
        computed(timestep=next(it), **kw)  # record the pieces' outputs
        res: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for _ in range(rounds):
            for key, f in (("plain", plain), ("computed", computed)):
                for rep in (False, True):
                    mode["replay"], inside[0] = rep, 0.0
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        f(timestep=next(it), **kw)
                    sync()
                    res.setdefault((key, rep), []).append(((time.perf_counter() - t0) / calls * 1e6,
                                                           inside[0] / calls * 1e6))
        mode["replay"] = False
    med = {k: (statistics.median(w for w, _ in v), statistics.median(i for _, i in v)) for k, v in res.items()}
    lines = ["| variant | wall µs / forward | inside compiled calls | around them (guards, wrappers, runner) | "
             "compiled calls replayed: host Python alone |", "|---|---:|---:|---:|---:|"]
    for key in ("plain", "computed"):
        (w, i), (wr, _) = med[(key, False)], med[(key, True)]
        lines.append(f"| {key} | {w:.0f} | {i:.0f} | {w - i:.0f} | {wr:.0f} |")
    return "\n".join(lines)


def profile(fns: dict[str, Callable], kw: dict, it, calls: int = 20, top: int = 12) -> str:
    """Per variant: kernel launches and host ops per forward, from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.startswith("cuda") else [])
    out = []
    for k, f in fns.items():
        with torch_profile(activities=acts) as prof:  # (fold is applied at compile time, long done)
            for _ in range(calls):
                f(timestep=next(it), **kw)
            if DEVICE.startswith("cuda"):
                torch.cuda.synchronize()
        events = prof.key_averages()
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"))
        syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                         "cudaMemcpyAsync"))
        ops = sorted((e for e in events if not e.key.startswith("cuda") and not e.key.startswith("cuLaunch")),
                     key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out.append(f"{k}: {launches / calls:.1f} kernel launches, {syncs / calls:.1f} memcpy/sync calls per forward; "
                   "top host ops (self CPU µs per forward, calls per forward):")
        out += [f"    {e.self_cpu_time_total / calls:8.1f}  {e.count / calls:5.1f}  {e.key[:90]}" for e in ops]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=120, help="interleaved rounds (default: 120)")
    p.add_argument("--calls", type=int, default=10, help="forwards per variant per round (default: 10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, no OpenMP barrier stalls)")
    p.add_argument("--variants", default="plain,computed,cached,cachedit",
                   help="comma-separated (default: plain,computed,cached,cachedit; also: regional, regional_block, "
                        "repeated, unfolded)")
    p.add_argument("--regional", action="store_true", help="add the regional-lowering variant")
    p.add_argument("--device", default="cpu", help="cpu or cuda (host overhead bounds a fast GPU)")
    p.add_argument("--breakdown", action="store_true",
                   help="after the timing, split plain and computed forwards into time inside compiled code, "
                        "around it, and host Python alone (compiled calls replayed)")
    p.add_argument("--profile", action="store_true",
                   help="after the timing, profile each variant: kernel launches and host ops per forward")
    p.add_argument("--results", nargs="?", const="benchmarks/RESULTS.md", default=None,
                   help="append the table to RESULTS.md (default path when given without a value)")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if DEVICE.startswith("cuda") else (lambda: None)
    keys = args.variants.split(",") + (["regional"] if args.regional and "regional" not in args.variants else [])
    kw, ts = inputs(args.calls)
    it = iter(ts)
    fns = {}
    with torch.no_grad():
        for k in keys:
            fns[k] = make(k)
            with _unfolded(k == "unfolded"):
                for _ in range(3):  # compile + settle (both runner branches of "cached")
                    fns[k](timestep=next(it), **kw)
        times = {k: [] for k in keys}
        cpu_times = {k: [] for k in keys}  # process CPU time: blind to other jobs and VM steal
        for _ in range(args.rounds):
            for k in keys:
                f = fns[k]
                steps = [next(it) for _ in range(args.calls)]
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                for t in steps:
                    f(timestep=t, **kw)
                sync()
                times[k].append((time.perf_counter() - t0) / args.calls * 1e6)
                cpu_times[k].append((time.process_time() - c0) / args.calls * 1e6)
    if "cached" in fns:  # the cached variant really cached (1 computed step, then all cached)
        print(f"cached variant: {len(dcp.summary(fns['cached']).cached_steps)} cached calls", file=sys.stderr)
    rows = []
    for k in keys:
        row = [k]
        for t in (times, cpu_times):
            base = t.get("plain")
            r = [a / b for a, b in zip(t[k], base)] if base else [float("nan")] * 2
            dec = statistics.quantiles(r, n=10) if len(r) > 1 else r * 9
            row += [statistics.median(t[k]), statistics.median(r), dec[0], dec[-1]]
        rows.append(row)
    cpu = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else (platform.processor() or platform.machine())
    head = (f"overhead per forward, tiny FLUX 4+8 blocks (inner 32, 16+8 tokens), inductor, {args.threads} thread(s), "
            f"{args.rounds} interleaved rounds x {args.calls} calls, {DEVICE}: {cpu} ({os.cpu_count()} CPUs), "
            f"torch {torch.__version__}")
    lines = [head, "", "| variant | wall µs / forward | wall ratio to plain (p10-p90) | CPU µs / forward | "
             "CPU-time ratio to plain (p10-p90) |", "|---|---:|---:|---:|---:|"]
    for k, us, r, lo, hi, cus, cr, clo, chi in rows:
        lines.append(f"| {k} | {us:.0f} | {r:.3f} ({lo:.2f}-{hi:.2f}) | {cus:.0f} | {cr:.3f} ({clo:.2f}-{chi:.2f}) |")
    lines.append("")
    lines.append("Ratios are taken within each round (same moment, same load), then the median over rounds "
                 "and the 10th-90th percentile range. "
                 "CPU time (time.process_time) does not count time the process waits for a core, so it is "
                 "the steadier figure on a shared machine; on a GPU the wall column is the one that counts.")
    report("Runner overhead", cpu, "\n".join(lines), args.results, argv)
    if args.breakdown:
        report("Runner overhead, broken down", cpu, breakdown(kw, it), args.results, argv)
    if args.profile:
        with torch.no_grad():
            text = profile(fns, kw, it)
        report("Runner overhead, profiled", cpu, "```\n" + text + "\n```", args.results, argv)

if __name__ == "__main__":
    main()
