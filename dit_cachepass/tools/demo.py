"""The demo, in two parts, no downloads:

- digits: the shipped trained FluxTransformer2DModel (sklearn digits, flow matching, CFG)
  samples a grid with no cache and with several cache configs; saves the grids side by side
  and prints cached steps, ideal speedup, PSNR / SSIM vs no cache and classifier accuracy.
- speed: a FLUX-shaped model whose block work dominates on CPU (random weights), denoised with
  and without the cache under the same torch.compile backend, timed in interleaved rounds; prints
  the median wall speedup with its spread, and says so when the machine was too busy to trust it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from ..config import DBCacheConfig

# Packages the demo never uses but that diffusers / transformers import when installed (the test
# extra installs torchao): importing torchao prints "Failed to load ... _C_mxfp8 ... Could not load
# this library" (its CUDA extensions, from torchao's logger) and two torch pytree deprecation
# warnings (torchao registers enums with pytree.register_constant), and costs seconds.
DEMO_UNUSED_PACKAGES = ("torchao",)


def hide_unused_packages(names: tuple[str, ...] = DEMO_UNUSED_PACKAGES) -> list[str]:
    """Make ``names`` look uninstalled to this process (``sys.modules[name] = None``: ``import``
    raises ImportError and ``importlib.util.find_spec`` returns None, which is how diffusers and
    transformers decide whether to import them). Only for the demo's own process, before diffusers
    is imported; a package already imported is left alone. Returns the names hidden."""
    hidden = []
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]
            hidden.append(name)
    return hidden


def choose_threads(cpu_count: Optional[int] = None, load: Optional[float] = None,
                   env: Optional[dict] = None) -> int:
    """Intra-op threads for the demo.

    An explicit ``OMP_NUM_THREADS`` wins. Otherwise at most 2, and 1 unless 2 cores are idle (by
    the 1-minute load average): an OpenMP parallel region waits at its barrier for its slowest
    thread, so on a busy machine one descheduled thread stalls every op and timings swing by
    multiples (likely behind the "no cache (eager) 13.63x" once printed on a loaded 2-core box);
    one thread never waits for another. The models here are small: more than 2 threads buys little.
    """
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return int(env["OMP_NUM_THREADS"])
    cpu_count = cpu_count or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    free = int(cpu_count - load)
    return 2 if free >= 2 else 1


# ----------------------------------------------------------------------------- progress

@contextmanager
def progress_bar(enabled: bool = True) -> Iterator:
    """A rich progress display (spinner, phase, steps done, elapsed time); a no-op when disabled.
    It refreshes from its own thread, so a long first step (compilation) still shows time passing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, disable=not enabled) as bar:
        yield bar


class _StepCounter(torch.nn.Module):
    """Calls ``inner`` and advances a progress task once per call (one denoising step)."""

    def __init__(self, inner: Callable, tick: Callable[[], None]):
        super().__init__()
        self.inner, self._tick = inner, tick

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        self._tick()
        return out


# ----------------------------------------------------------------------------- speed part

def build_flux(seed: int = 0, num_layers: int = 4, num_single_layers: int = 8) -> torch.nn.Module:
    """~18M-parameter FluxTransformer2DModel: 4 double + 8 single blocks (~75 ms/forward on 2 CPU
    cores); the benchmarks' model (``benchmarks/e2e.py``, ``compile_time.py``, ``parallel.py``)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=32, num_attention_heads=8, joint_attention_dim=64, pooled_projection_dim=64,
        axes_dims_rope=(8, 12, 12),
    ).eval()


def build_speed_model(seed: int = 0) -> torch.nn.Module:
    """The demo's speed-part model: ``build_flux`` with 2 double + 4 single blocks (~9M parameters).

    Compile time grows with the number of blocks (dynamo traces each one), so half the blocks
    halve the two compiles, while block work still dominates a step (~0.15 s/forward on one core)."""
    return build_flux(seed, num_layers=2, num_single_layers=4)


@dataclass
class DemoInputs:
    latents: torch.Tensor
    prompt: torch.Tensor
    pooled: torch.Tensor
    img_ids: torch.Tensor
    txt_ids: torch.Tensor


def make_inputs(seed: int = 0, tokens: int = 256, text: int = 32) -> DemoInputs:
    g = torch.Generator().manual_seed(seed)
    side = int(tokens ** 0.5)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3).float()
    return DemoInputs(torch.randn(1, tokens, 16, generator=g), torch.randn(1, text, 64, generator=g),
                      torch.randn(1, 64, generator=g), img_ids, torch.zeros(text, 3))


@torch.no_grad()
def denoise(model: Callable, inp: DemoInputs, steps: int, on_step: Optional[Callable[[], None]] = None
            ) -> torch.Tensor:
    """Flow-matching Euler sampling with diffusers' scheduler, as FluxPipeline does."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(steps)
    x = inp.latents.clone()
    for t in sched.timesteps:
        v = model(hidden_states=x, encoder_hidden_states=inp.prompt, pooled_projections=inp.pooled,
                  timestep=(t / 1000).expand(1), img_ids=inp.img_ids, txt_ids=inp.txt_ids, return_dict=False)[0]
        x = sched.step(v, t, x, return_dict=False)[0]
        if on_step is not None:
            on_step()
    return x


@dataclass
class Row:
    """One variant of the speed part. ``times[r]`` is its wall time in round r; ``ratios[r]`` is
    the uncached time of the same round divided by ``times[r]`` (its wall speedup in that round)."""

    name: str
    cached: str
    ideal: float
    rel_err: float
    times: list = field(default_factory=list)
    ratios: list = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def speedup(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    @property
    def spread(self) -> float:
        return ratio_spread(self.ratios)


def round_orders(names: list, rounds: int) -> list[list]:
    """Round-robin timing order: every round runs every variant once, the order rotated by one
    each round so that no variant always runs first (or right after a compile, or last)."""
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(rounds)]


def ratio_spread(ratios: list) -> float:
    """Half the min-max range of the per-round ratios, relative to their median (0.1 = ±10%)."""
    if len(ratios) < 2:
        return 0.0
    med = statistics.median(ratios)
    return (max(ratios) - min(ratios)) / 2 / med if med > 0 else float("inf")


BUSY_SPREAD = 0.10  # a speedup whose rounds disagree by more than ±10% is not worth quoting


def busy_verdict(rows: list[Row], limit: float = BUSY_SPREAD) -> Optional[str]:
    """The warning to print when the per-round speedups disagree by more than ``limit``, else None."""
    spreads = [r.spread for r in rows if len(r.ratios) > 1]
    if not spreads or max(spreads) <= limit:
        return None
    return (f"this machine was busy: speed numbers unreliable (spread ±{max(spreads):.0%} between rounds, "
            f"limit ±{limit:.0%}); rerun on an idle machine or with more --repeats")


# Random weights: Fn-residual diffs between steps are ~0.45-0.55 here (~0.05-0.15 on a trained
# FLUX), so these thresholds sit in that band; on a trained model use 0.08-0.2.
DEFAULT_CONFIGS = {
    "FBCache F1B0 R0.55 MC3": DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.55,
                                        max_warmup_steps=3, max_continuous_cached_steps=3),
}


def run(steps: int = 20, backend: str = "aot_eager", repeats: int = 5, configs: Optional[dict] = None,
        progress: bool = True, inputs: Optional[DemoInputs] = None,
        model_fn: Callable[[], torch.nn.Module] = build_speed_model) -> list[Row]:
    """Compile the uncached model and each cached config under ``backend``, then time them in
    ``repeats`` interleaved rounds (see ``round_orders``). Returns the uncached row first."""
    import dit_cachepass as dcp

    configs = DEFAULT_CONFIGS if configs is None else configs
    inp = inputs if inputs is not None else make_inputs()
    base_name = "no cache"
    models: dict = {}
    rows: dict = {}
    with progress_bar(progress) as bar:
        def phase(desc: str, total: int = steps):
            task = bar.add_task(desc, total=total)
            return task, (lambda: bar.advance(task))

        task, tick = phase(f"speed: compiling + first run, {base_name}")
        models[base_name] = torch.compile(model_fn(), backend=backend) if backend != "eager" else model_fn()
        ref = denoise(models[base_name], inp, steps, tick)
        bar.remove_task(task)
        rows[base_name] = Row(base_name, f"0/{steps}", 1.0, 0.0)
        for name, cfg in configs.items():
            task, tick = phase(f"speed: compiling + first run, {name}")
            m = dcp.compile(model_fn(), cfg, backend=backend)
            out = denoise(m, inp, steps, tick)
            bar.remove_task(task)
            sm = dcp.summary(m)
            models[name] = m
            rows[name] = Row(name, f"{len(sm.cached_steps)}/{steps}", sm.ideal_speedup, _rel(out, ref))
        orders = round_orders(list(models), repeats)
        task = bar.add_task(f"speed: timing {len(models)} variants in {repeats} interleaved rounds",
                            total=len(models) * repeats * steps)
        for order in orders:
            for name in order:
                t0 = time.perf_counter()
                denoise(models[name], inp, steps, lambda: bar.advance(task))
                rows[name].times.append(time.perf_counter() - t0)
            for row in rows.values():
                row.ratios.append(rows[base_name].times[-1] / row.times[-1])
    return list(rows.values())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


def print_rows(rows: list[Row], steps: int, backend: str) -> None:
    from rich.console import Console
    from rich.table import Table

    n = len(rows[0].ratios) if rows else 0
    t = Table(title=f"dit_cachepass demo, part 2: FLUX-shaped model (random weights), {steps} Euler steps, "
                    f"torch.compile backend={backend}, {torch.get_num_threads()} CPU thread(s), "
                    f"{n} interleaved rounds")
    for col in ("variant", "cached steps", "ideal speedup", "wall / gen (s)", "wall speedup (min-max)",
                "rel. L1 err"):
        t.add_column(col, justify="left" if col == "variant" else "right", no_wrap=col == "variant")
    for r in rows:
        rng = f" ({min(r.ratios):.2f}-{max(r.ratios):.2f})" if len(r.ratios) > 1 and r is not rows[0] else ""
        t.add_row(r.name, r.cached, f"{r.ideal:.2f}x", f"{r.wall_s:.2f}", f"{r.speedup:.2f}x{rng}",
                  f"{r.rel_err:.4f}")
    console = Console(width=max(Console().width, 110))
    console.print(t)
    console.print("wall speedup: uncached time / cached time within the same round, median over rounds "
                  "(min-max in brackets); ideal speedup = block work of the full run / block work executed. "
                  "Random weights change more between steps than a trained model, so thresholds here are "
                  "higher than you would use on FLUX.1-dev.")
    verdict = busy_verdict(rows)
    if verdict:
        console.print(f"[bold yellow]{verdict}[/]")


# ----------------------------------------------------------------------------- digits part

# Trained model: first-block diffs are ~0.09-0.12 mid-trajectory at 20 steps.
DIGITS_CONFIGS = {
    "FBCache F1B0 R0.12": (DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.12,
                                         max_warmup_steps=3), None),
    "DBCache F2B1 R0.15 MC3": (DBCacheConfig(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.15,
                                             max_warmup_steps=3, max_continuous_cached_steps=3), None),
    "DBCache F1B1 R0.25 MC2 + TaylorSeer O1": (
        DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.25, max_warmup_steps=3,
                      max_continuous_cached_steps=2), "taylorseer"),
}


@dataclass
class DigitsRow:
    name: str
    cached: str
    ideal: float
    psnr: float
    ssim: float
    accuracy: float


def run_digits(steps: int = 20, per_class: int = 4, out: str = "demo_out/digits.png",
               configs: Optional[dict] = None, progress: bool = False) -> list[DigitsRow]:
    """Sample digits 0-9 with each config (eager backend: this part is about fidelity)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    import dit_cachepass as dcp

    from ..demo_model import classifier_accuracy, load_digits_dit, sample

    configs = configs or DIGITS_CONFIGS
    labels = torch.arange(10).repeat_interleave(per_class)
    with torch.no_grad(), progress_bar(progress) as bar:
        def counted(model, desc: str) -> _StepCounter:
            task = bar.add_task(desc, total=steps)
            return _StepCounter(model, lambda: bar.advance(task))

        loading = bar.add_task("digits: importing diffusers, loading the trained model", total=None)
        model, info = load_digits_dit()
        bar.remove_task(loading)
        ref = sample(counted(model, "digits: sampling, no cache"), labels, steps=steps, seed=0, info=info)
        grids = {"no cache": ref}
        rows = [DigitsRow("no cache", f"0/{steps}", 1.0, float("inf"), 1.0, classifier_accuracy(ref, labels))]
        for name, (cfg, calib) in configs.items():
            cal = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1) if calib else None
            m = dcp.compile(load_digits_dit()[0], cfg, calibrator_config=cal, backend="eager")
            imgs = sample(counted(m, f"digits: capturing + sampling, {name}"), labels, steps=steps, seed=0,
                          info=info)
            sm = dcp.summary(m)
            grids[name] = imgs
            rows.append(DigitsRow(name, f"{len(sm.cached_steps)}/{steps}", sm.ideal_speedup,
                                  float(peak_signal_noise_ratio(imgs, ref, data_range=1.0)),
                                  float(structural_similarity_index_measure(imgs, ref, data_range=1.0, kernel_size=3)),
                                  classifier_accuracy(imgs, labels)))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    _save_grids(grids, rows, out, per_class)
    return rows


def _save_grids(grids: dict, rows: list[DigitsRow], path: str, per_class: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(3.4 * len(grids), 2.1))
    for ax, (name, imgs), row in zip(axes, grids.items(), rows):
        n, _, h, w = imgs.shape
        padded = torch.nn.functional.pad(imgs, (1, 1, 1, 1), value=0.35)  # a thin frame per digit
        h, w = h + 2, w + 2
        grid = padded.reshape(10, per_class, h, w).permute(1, 2, 0, 3).reshape(per_class * h, 10 * w)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        sub = "" if row.cached.startswith("0/") else f"\ncached {row.cached}, PSNR {row.psnr:.1f} dB"
        ax.set_title(f"{name}{sub}\naccuracy {row.accuracy:.0%}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_digits(rows: list[DigitsRow], steps: int, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"dit_cachepass demo, part 1: trained FLUX-class model on digits, {steps} steps, batched CFG")
    for col in ("variant", "cached steps", "ideal speedup (FLOPs)", "PSNR vs no cache", "SSIM", "digit accuracy"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        psnr = "-" if r.psnr == float("inf") else f"{r.psnr:.1f} dB"
        t.add_row(r.name, r.cached, f"{r.ideal:.2f}x", psnr, f"{r.ssim:.3f}", f"{r.accuracy:.0%}")
    console = Console(width=max(Console().width, 110))
    console.print(t)
    console.print(f"grids saved to {out} (digit accuracy: a small CNN trained on the same data reads the samples)")


