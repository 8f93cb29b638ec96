"""End-to-end benchmark: dit_cachepass against its peers on the same FLUX-shaped model.

One run, one set of weights (``demo.build_flux(seed=0)``, rebuilt per variant so hooks never
leak between variants), one set of inputs (``demo.make_inputs()``), the same flow-matching
Euler loop (``demo.denoise``). Variants:

  eager            no cache, eager
  compiled         no cache, torch.compile (inductor)
  cachedit         cache-dit DBCache (transformer-only mode), eager
  cachedit_compiled  cache-dit DBCache + torch.compile (inductor)
  diffusers_fbc    diffusers FirstBlockCache hook (eager)
  diffusers_taylorseer  diffusers TaylorSeer hook (eager)
  dcp_eager        dit_cachepass, backend="eager"
  dcp_inductor     dit_cachepass, backend="inductor"

Cache decisions are matched where the configs allow: cache-dit and dit_cachepass run the same
DBCacheConfig (default F1B0 R0.50, W4, MC2 = FBCache); diffusers' FirstBlockCache has only a
threshold (no warmup, no streak limit) so its decisions differ; TaylorSeer's schedule is static.

Timing: every variant runs warmup generations first (compile), then the variants are
interleaved round-robin for --repeats rounds and the median wall time per generation is
reported. Generation resets (cache-dit ``refresh_context``, diffusers ``_reset_stateful_cache``)
happen outside the timed region; dit_cachepass detects the new generation by itself.

Usage:  python benchmarks/e2e.py [--steps 20] [--repeats 5] [--variants a,b,...]
                                 [--out benchmarks/e2e_cpu.png] [--results [benchmarks/RESULTS.md]]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")  # cache-dit logs every config at INFO

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from dit_cachepass.tools.demo import build_flux, denoise, make_inputs  # noqa: E402

N_BLOCKS = 12  # 4 double + 8 single blocks in demo.build_flux()
ALL_VARIANTS = ["eager", "compiled", "compiled_regional", "cachedit", "cachedit_compiled", "diffusers_fbc",
                "diffusers_taylorseer", "dcp_eager", "dcp_inductor", "dcp_regional", "dcp_regional_block",
                "dcp_reduce_overhead"]
DEFAULT_VARIANTS = ["eager", "compiled", "cachedit", "cachedit_compiled", "diffusers_fbc",
                    "diffusers_taylorseer", "dcp_eager", "dcp_inductor"]
LABELS = {
    "eager": "no cache, eager",
    "compiled": "no cache, torch.compile (inductor)",
    "cachedit": "cache-dit 1.5.3 DBCache, eager",
    "cachedit_compiled": "cache-dit 1.5.3 DBCache + torch.compile",
    "diffusers_fbc": "diffusers FirstBlockCache, eager",
    "diffusers_taylorseer": "diffusers TaylorSeer, eager",
    "dcp_eager": "dit_cachepass, backend=eager",
    "dcp_inductor": "dit_cachepass, backend=inductor",
    "compiled_regional": "no cache, diffusers compile_repeated_blocks",
    "dcp_regional": "dit_cachepass, inductor, lowering=regional",
    "dcp_regional_block": "dit_cachepass, inductor, lowering=regional, path=block",
    "dcp_reduce_overhead": "dit_cachepass, inductor, mode=reduce-overhead",
}
COMPILED = {"compiled", "compiled_regional", "cachedit_compiled", "dcp_inductor", "dcp_regional",
            "dcp_regional_block", "dcp_reduce_overhead"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(args) -> torch.nn.Module:
    """``--model demo``: demo.build_flux (CPU-sized); ``--model gpu``: the same 4 + 8 blocks at a
    GPU-sized width (12 heads x 128, 1024 image + 256 text tokens), on ``--device`` in ``--dtype``."""
    if getattr(args, "model", "demo") == "gpu":
        from diffusers import FluxTransformer2DModel

        torch.manual_seed(0)
        m = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8,
                                   attention_head_dim=128, num_attention_heads=12, joint_attention_dim=1024,
                                   pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)).eval()
    else:
        m = build_flux()
    return m.to(getattr(args, "device", "cpu"), DTYPES[getattr(args, "dtype", "fp32")])


def build_inputs(args):
    """The demo's inputs (``--model demo``) or the GPU-sized model's, moved to the device and dtype."""
    from dataclasses import replace

    if getattr(args, "model", "demo") == "gpu":
        from dit_cachepass.tools.demo import DemoInputs

        g = torch.Generator().manual_seed(0)
        ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        ids = torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3).float()
        inp = DemoInputs(torch.randn(1, 1024, 64, generator=g), torch.randn(1, 256, 1024, generator=g),
                         torch.randn(1, 768, generator=g), ids, torch.zeros(256, 3))
    else:
        inp = make_inputs()
    dev, dt = getattr(args, "device", "cpu"), DTYPES[getattr(args, "dtype", "fp32")]
    return replace(inp, latents=inp.latents.to(dev, dt), prompt=inp.prompt.to(dev, dt), pooled=inp.pooled.to(dev, dt),
                   img_ids=inp.img_ids.to(dev), txt_ids=inp.txt_ids.to(dev))


@dataclass
class Variant:
    key: str
    call: Callable  # what demo.denoise calls as "model"
    pre_gen: Callable[[], None] = lambda: None  # start-of-generation reset (untimed)
    cached: Callable[[], Optional[list[int]]] = lambda: []  # cached step indices of the last generation
    skipped_blocks: Optional[int] = 0  # blocks skipped per cached step (None: not block skipping)
    note: str = ""
    times: list[float] = field(default_factory=list)
    out: Optional[torch.Tensor] = None
    cached_steps: Optional[list[int]] = None
    graphs_warmup: int = 0
    breaks_warmup: int = 0
    graphs_timed: int = 0
    setup_s: float = 0.0


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def _breaks() -> int:
    return int(sum(counters["graph_break"].values()))


# --------------------------------------------------------------------------- variant builders

def make_variant(key: str, args) -> Variant:
    F, B, R, W, MC = args.Fn, args.Bn, args.threshold, args.warmup, args.max_continuous
    skipped = N_BLOCKS - F - B
    if key == "eager":
        return Variant(key, build_model(args))
    if key == "compiled":
        return Variant(key, torch.compile(build_model(args), backend="inductor"))
    if key == "compiled_regional":
        m = build_model(args)
        m.compile_repeated_blocks()
        return Variant(key, m)
    if key in ("cachedit", "cachedit_compiled"):
        import cache_dit

        m = build_model(args)
        cfg = cache_dit.DBCacheConfig(Fn_compute_blocks=F, Bn_compute_blocks=B, residual_diff_threshold=R,
                                      max_warmup_steps=W, max_continuous_cached_steps=MC)
        # Transformer-only mode: cache-dit keeps a persistent context on the module. With
        # num_inference_steps=None it never resets by itself; with num_inference_steps=N
        # 1.5.3 resets one call late (maybe_refresh checks current_step >= N before the
        # step counter advances, so step 0 of generation 2 still runs in generation 1's
        # context). refresh_context() before every generation is the reliable reset.
        cache_dit.enable_cache(m, cache_config=cfg)  # returns the adapter's transformer list; m is patched in place
        ctx_names = list(m._context_names)

        def cached(m=m, names=ctx_names):
            out: list[int] = []
            for n in names:
                out += list(m._context_manager.get_context(n).get_cached_steps())
            return sorted(set(out))

        call = m
        if key == "cachedit_compiled":
            # cache-dit's own recipe is set_compile_configs() (recompile_limit=1024, coordinate-
            # descent tuning, ...); it changes global inductor settings for every variant in
            # this process, so only the dynamo recompile limits are raised here (see --cachedit-compile-configs).
            if args.cachedit_compile_configs:
                cache_dit.set_compile_configs()
            else:
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 1024)
                torch._dynamo.config.accumulated_recompile_limit = max(
                    torch._dynamo.config.accumulated_recompile_limit, 8192)
            call = torch.compile(m, backend="inductor")
        return Variant(key, call, pre_gen=lambda m=m: cache_dit.refresh_context(m), cached=cached,
                       skipped_blocks=skipped)
    if key in ("diffusers_fbc", "diffusers_taylorseer"):
        m = build_model(args)
        record: list[int] = []
        calls = [0]
        if key == "diffusers_fbc":
            from diffusers import FirstBlockCacheConfig
            from diffusers.hooks import HookRegistry

            m.enable_cache(FirstBlockCacheConfig(threshold=R))
            hook = next(h for mod in m.modules() if hasattr(mod, "_diffusers_hook")
                        for h in HookRegistry.check_if_exists_or_initialize(mod).hooks.values()
                        if hasattr(h, "_should_compute_remaining_blocks"))
            inner = hook._should_compute_remaining_blocks

            def should_compute(residual, inner=inner):
                go = inner(residual)
                if not go:
                    record.append(calls[0])
                return go

            hook._should_compute_remaining_blocks = should_compute
            skip, note = N_BLOCKS - 1, "threshold only: no warmup / streak limit"
        else:
            from diffusers import TaylorSeerCacheConfig
            from diffusers.hooks import HookRegistry

            m.enable_cache(TaylorSeerCacheConfig(cache_interval=args.ts_interval, disable_cache_before_step=W,
                                                 max_order=1, taylor_factors_dtype=torch.float32))
            hook = next(h for mod in m.modules() if hasattr(mod, "_diffusers_hook")
                        for h in HookRegistry.check_if_exists_or_initialize(mod).hooks.values()
                        if hasattr(h, "_measure_should_compute"))
            inner = hook._measure_should_compute

            def measure(inner=inner):
                go, state = inner()
                if not go:
                    record.append(calls[0])
                return go, state

            hook._measure_should_compute = measure
            skip, note = None, f"static schedule (interval {args.ts_interval}), predicts attention outputs only"

        def call(*a, m=m, **kw):
            # as FluxPipeline: every transformer call inside cache_context("cond")
            with m.cache_context("cond"):
                out = m(*a, **kw)
            calls[0] += 1
            return out

        def pre_gen(m=m):
            m._reset_stateful_cache()  # what DiffusionPipeline.maybe_free_model_hooks() does after a call
            record.clear()
            calls[0] = 0

        return Variant(key, call, pre_gen=pre_gen, cached=lambda: list(record), skipped_blocks=skip, note=note)
    if key.startswith("dcp_"):
        import dit_cachepass as dcp

        cfg = dcp.DBCacheConfig(Fn_compute_blocks=F, Bn_compute_blocks=B, residual_diff_threshold=R,
                                max_warmup_steps=W, max_continuous_cached_steps=MC)
        kw = {"dcp_eager": dict(backend="eager"), "dcp_inductor": {}, "dcp_regional": dict(lowering="regional"),
              "dcp_regional_block": dict(lowering="regional", path="block"),
              "dcp_reduce_overhead": dict(mode="reduce-overhead")}[key]
        m = dcp.compile(build_model(args), cfg, **kw)

        def cached(m=m):
            loops = dcp.summary(m).loops
            return sorted(loops[0].cached_steps) if loops else []

        return Variant(key, m, cached=cached, skipped_blocks=skipped)
    raise ValueError(f"unknown variant {key!r}; choose from {', '.join(ALL_VARIANTS)}")


# --------------------------------------------------------------------------- measurement

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean() / b.float().abs().mean())


def on_device(call: Callable, inp) -> Callable:
    """``call`` with the timestep moved to the latents' device and dtype (the scheduler's
    timesteps live on the CPU); ``call`` itself on a CPU."""
    dev = inp.latents.device
    if dev.type == "cpu":
        return call

    def moved(*a, **kw):
        kw["timestep"] = kw["timestep"].to(dev, inp.latents.dtype)
        return call(*a, **kw)
    return moved


def run_once(v: Variant, inp, steps: int) -> float:
    v.pre_gen()
    dev = inp.latents.device
    call = on_device(v.call, inp)
    if dev.type != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = denoise(call, inp, steps)
    if dev.type != "cpu":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    v.out = out
    v.cached_steps = v.cached()
    return dt


class _OutOfTime(Exception):
    """Raised by the SIGTERM handler (``timeout``) so the rounds measured so far are still reported."""


def _on_sigterm(signum, frame):
    raise _OutOfTime()


def measure(args) -> list[Variant]:
    """Warm every variant up (compiles included), then time interleaved rounds. With
    ``--time-budget S`` (or on SIGTERM, as ``timeout`` sends) it stops early but always reports
    the variants that finished warming up and the rounds that completed: a GPU lease is short,
    and a partial table beats none."""
    import signal

    from rich.console import Console

    console = Console(stderr=True)
    inp = build_inputs(args)
    variants: list[Variant] = []
    start = time.perf_counter()
    budget = args.time_budget or float("inf")
    signal.signal(signal.SIGTERM, _on_sigterm)
    repeats = args.repeats
    try:
        _warm_up(args, inp, variants, console, start, budget)
    except _OutOfTime:  # the variants warmed up so far still get one round
        console.print("[red]SIGTERM during the warmups: one round of the variants ready[/red]")
        repeats = 1
    try:
        _time_rounds(args.steps, repeats, inp, variants, console, start, budget)
    except _OutOfTime:
        console.print("[red]SIGTERM: reporting the rounds completed[/red]")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # a round cut short leaves some variants one time behind: keep the full rounds (or, when the
    # first round was cut short, the variants it reached)
    done = [v for v in variants if v.times]
    n = min((len(v.times) for v in done), default=0)
    for v in done:
        del v.times[n:]
    return done


def _warm_up(args, inp, variants: list[Variant], console, start: float, budget: float) -> None:
    """A variant is skipped when the longest warmup so far would not end within 90 % of the
    budget (the rest is for the timed rounds, a few generations per variant)."""
    longest = 0.0
    for key in args.variants:
        if time.perf_counter() - start + longest > 0.9 * budget:
            console.print(f"[red]{key}: skipped, its warmup would not fit in --time-budget {budget:.0f} s[/red]")
            continue
        t0 = time.perf_counter()
        g0, b0 = _graphs(), _breaks()
        try:
            v = make_variant(key, args)
            for _ in range(args.warmup_gens):
                run_once(v, inp, args.steps)
        except Exception as err:  # a peer that does not run on this model is reported, not fatal
            console.print(f"[red]{key}: {type(err).__name__}: {err}[/red] (skipped)")
            continue
        v.graphs_warmup, v.breaks_warmup = _graphs() - g0, _breaks() - b0
        v.setup_s = time.perf_counter() - t0
        longest = max(longest, v.setup_s)
        console.print(f"[dim]warmup {key}: {v.setup_s:.1f} s, {v.graphs_warmup} graph(s), "
                      f"{v.breaks_warmup} graph break(s), cached {v.cached_steps}[/dim]")
        variants.append(v)


def _time_rounds(steps: int, repeats: int, inp, variants: list[Variant], console, start: float,
                 budget: float) -> None:
    for r in range(repeats):  # round-robin: variant order rotates every round
        t_round = time.perf_counter()
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            g0 = _graphs()
            v.times.append(run_once(v, inp, steps))
            v.graphs_timed += _graphs() - g0
        console.print(f"[dim]round {r + 1}/{repeats} done[/dim]")
        now = time.perf_counter()
        if r + 1 < repeats and now + (now - t_round) - start > budget:
            console.print(f"[red]stopping after {r + 1} round(s): --time-budget {budget:.0f} s[/red]")
            break


@dataclass
class Row:
    key: str
    label: str
    wall: float
    wmin: float
    wmax: float
    vs_eager: Optional[float]
    vs_compiled: Optional[float]
    cached: str
    ideal: Optional[float]
    overhead: Optional[float]
    graphs: str
    breaks: str
    err: Optional[float]
    note: str
    setup_s: float = 0.0


def rows_of(variants: list[Variant], steps: int) -> list[Row]:
    by = {v.key: v for v in variants}
    med = {v.key: statistics.median(v.times) for v in variants}
    ref = by["eager"].out if "eager" in by else None
    rows = []
    for v in variants:
        n_cached = len(v.cached_steps or [])
        if v.skipped_blocks is None:
            ideal = None
        else:
            ideal = steps * N_BLOCKS / (steps * N_BLOCKS - n_cached * v.skipped_blocks)
        base_key = "compiled" if v.key in COMPILED else "eager"
        overhead = med[v.key] / (med[base_key] / ideal) if ideal and base_key in med else None
        compiled = v.key in COMPILED
        rows.append(Row(
            v.key, LABELS[v.key], med[v.key], min(v.times), max(v.times),
            med["eager"] / med[v.key] if "eager" in med else None,
            med["compiled"] / med[v.key] if "compiled" in med else None,
            f"{n_cached}/{steps}", ideal, overhead,
            f"{v.graphs_warmup} / {v.graphs_timed}" if compiled or v.key == "dcp_eager" else "-",
            str(v.breaks_warmup) if compiled or v.key == "dcp_eager" else "-",
            _rel(v.out, ref) if ref is not None else None, v.note, v.setup_s))
    return rows


def _x(v: Optional[float], fmt: str = "{:.2f}x") -> str:
    return "n/a" if v is None else fmt.format(v)


HEADERS = ["variant", "wall / gen (median)", "vs no-cache eager", "vs no-cache compiled", "cached steps",
           "ideal speedup", "overhead ratio", "graphs warmup / recompiles timed", "graph breaks",
           "rel. L1 err vs no cache", "warmup s (compile incl.)"]


def cells(r: Row) -> list[str]:
    return [r.label, f"{r.wall:.3f} s", _x(r.vs_eager), _x(r.vs_compiled), r.cached, _x(r.ideal),
            _x(r.overhead, "{:.2f}"), r.graphs, r.breaks, "0" if r.key == "eager" else _x(r.err, "{:.4f}"),
            f"{r.setup_s:.1f}"]


def print_table(rows: list[Row], variants: list[Variant], args) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"e2e: FLUX-shaped model (random weights, {_model_words(args)}), {args.steps} Euler steps, "
                    f"{args.machine}, {torch.get_num_threads()} CPU threads, median of "
                    f"{min(len(v.times) for v in variants)} interleaved rounds")
    for h in HEADERS:
        t.add_column(h, justify="left" if h == "variant" else "right")
    for r in rows:
        t.add_row(*cells(r))
    console = Console(width=max(Console().width, 200))
    console.print(t)
    for v in variants:
        console.print(f"  {v.key:22s} cached steps {v.cached_steps}  times {[round(x, 3) for x in v.times]}"
                      + (f"  ({v.note})" if v.note else ""))


def _model_words(args) -> str:
    if getattr(args, "model", "demo") == "gpu":
        return "4 double + 8 single blocks, 12 heads x 128, 1024 image + 256 text tokens"
    return "dit_cachepass.tools.demo's model: 4 double + 8 single blocks, 256 image + 32 text tokens"


def markdown(rows: list[Row], variants: list[Variant], args, command: str) -> str:
    cfg = (f"F{args.Fn}B{args.Bn} R{args.threshold:.2f} W{args.warmup} MC{args.max_continuous}")
    lines = [
        "", f"## End to end against peers ({args.date}, {args.machine})",
        f"Command: `{command}`.",
        f"FLUX-shaped `FluxTransformer2DModel` ({_model_words(args)}, random weights), "
        f"{args.steps} flow-matching Euler steps, same "
        f"weights / inputs / seeds for every variant. Warmup ({args.warmup_gens} generations per variant, "
        f"compiles included) first, then {min(len(v.times) for v in variants)} rounds with the variants interleaved round-robin; "
        f"median wall time per generation. Cache config for cache-dit and dit_cachepass: DBCache {cfg}; "
        f"diffusers FirstBlockCache: threshold {args.threshold:.2f}; diffusers TaylorSeer: "
        f"cache_interval={args.ts_interval}, disable_cache_before_step={args.warmup}, order 1, fp32 factors. "
        f"{torch.get_num_threads()} torch threads; 1-min load average {args.load[0]:.1f} at start, "
        f"{args.load[1]:.1f} at end (the machine is shared: other jobs ran concurrently).",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(cells(r)) + " |")
    lines += [
        "",
        "Cached step indices: " + "; ".join(f"{v.key} {v.cached_steps}" for v in variants) + ".",
        "",
        f"Ideal speedup = block work of the full run / block work executed = (steps·{N_BLOCKS}) / "
        f"(steps·{N_BLOCKS} − cached·(blocks skipped per cached step)); n/a for TaylorSeer (it predicts "
        "attention outputs only, the rest of every block still runs). Overhead ratio = wall / (no-cache wall "
        "of the same backend / ideal): 1.00 means the wall time fell exactly as much as the block work; it is "
        "taken against no-cache eager for eager variants and against no-cache compiled for compiled ones. "
        "Graphs: dynamo graphs compiled during warmup / new graphs during the timed rounds "
        "(`counters['stats']['unique_graphs']` deltas; 0 recompiles = none after warmup); graph breaks: "
        "`counters['graph_break']` delta during warmup. Error: relative L1 of the final latents against "
        "no-cache eager. Warmup s includes compiles, but variants in one process share dynamo's cache "
        "(per code object: a block compiled by one variant is reused by the next), so it is not a "
        "compile time; `benchmarks/compile_time.py` measures those in fresh processes.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: str, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    xs = range(len(rows))
    colors = ["#4c72b0" if r.key not in COMPILED else "#dd8452" for r in rows]
    ax.bar(xs, [r.wall for r in rows], color=colors,
           yerr=[[r.wall - r.wmin for r in rows], [r.wmax - r.wall for r in rows]], capsize=3)
    for i, r in enumerate(rows):
        ax.text(i, r.wmax + 0.02, f"{_x(r.vs_eager)}\n{r.cached}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [textwrap.fill(r.label, 16) for r in rows], fontsize=7.5)
    ax.set_ylabel("wall time per generation (s), median; bars: min-max")
    ax.set_ylim(0, max(r.wmax for r in rows) * 1.25)
    ax.set_title(f"FLUX-shaped model, {args.steps} steps, {args.machine}: "
                 "labels = speedup vs no-cache eager, cached steps (blue eager, orange compiled)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (median reported)")
    p.add_argument("--warmup-gens", type=int, default=2, help="untimed generations per variant first")
    p.add_argument("--model", choices=["demo", "gpu"], default="demo",
                   help="demo: demo.build_flux (CPU-sized); gpu: 4+8 FLUX blocks at 12 heads x 128, 1024+256 tokens")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of: {', '.join(ALL_VARIANTS)}")
    p.add_argument("--Fn", type=int, default=1)
    p.add_argument("--Bn", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.50)
    p.add_argument("--warmup", type=int, default=4, help="max_warmup_steps (TaylorSeer: disable_cache_before_step)")
    p.add_argument("--max-continuous", type=int, default=2, help="max_continuous_cached_steps")
    p.add_argument("--ts-interval", type=int, default=3, help="TaylorSeer cache_interval")
    p.add_argument("--cachedit-compile-configs", action="store_true",
                   help="call cache_dit.set_compile_configs() (global inductor settings, affects all variants)")
    p.add_argument("--out", default="benchmarks/e2e_cpu.png", help="bar plot (PNG)")
    p.add_argument("--results", nargs="?", const="benchmarks/RESULTS.md", default=None,
                   help="append the markdown table to this file (default when given: benchmarks/RESULTS.md)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; 1 by default: on a shared CPU, multi-threaded eager ops stall "
                        "at every OpenMP barrier when another job holds a core (10-30x slowdowns seen), 0 = "
                        "torch's default")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="skip a variant whose warmup (estimated by the longest so far) would end after 90%% of "
                        "S seconds, and stop the rounds before S; the table covers what finished")
    p.add_argument("--date", default=datetime.date.today().isoformat())
    p.add_argument("--machine", default=None, help="machine label (default: the GPU's name or 'CPU', and torch)")
    args = p.parse_args(argv)
    if args.machine is None:
        dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        args.machine = f"{dev}, {args.dtype}, torch {torch.__version__}"
    args.variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    bad = [k for k in args.variants if k not in ALL_VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {ALL_VARIANTS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])

    load0 = os.getloadavg()[0]
    variants = measure(args)
    if not variants:
        sys.exit("e2e: no variant finished its warmup")
    args.load = (load0, os.getloadavg()[0])
    rows = rows_of(variants, args.steps)
    print_table(rows, variants, args)
    if args.out:
        plot(rows, args.out, args)
        print(f"plot: {args.out}")
    if args.results:
        with open(args.results, "a") as f:
            f.write(markdown(rows, variants, args, command))
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
