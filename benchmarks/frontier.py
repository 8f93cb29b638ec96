"""Quality-vs-speedup frontier: how fast can each cache policy go, at what quality loss.

Users choose a cache by "how fast, at what quality loss". For each policy family and a sweep of
its knob, this script measures on the two TRAINED models shipped with the package
(``demo_model``'s digits FluxTransformer2DModel and ``demo_model.clips``' WanTransformer3DModel):

- the ideal speedup: FLOPs of the uncached calls over FLOPs executed
  (``dcp.summary(model).full_flops / executed_flops``, summed over the evaluation generations);
- quality against the UNCACHED output of the same seeds and labels (a model that was never compiled):
  PSNR in dB over all pixels of the eval set (images in [0,1], one pooled MSE; ``inf`` when equal),
  SSIM (torchmetrics' ``structural_similarity_index_measure``, data_range 1, a UNIFORM 3x3 window:
  the default 11x11 Gaussian does not fit 8x8 digits; clips are scored per frame), and the shipped
  digit classifier's accuracy on the cached output.

Calibration and evaluation are kept apart: families that calibrate (planned schedules) only see
``CalibrationContext`` (calibration seeds 0-3, its own label order); evaluation uses seeds 100+ and
labels 0-9 repeated ``--per-class`` times. It prints one table per model, each family's Pareto
points, a summary "best PSNR at >= target speedup" per family (with the margin of any non-cache-dit
family over the best cache-dit family), the same comparison at EVERY speedup from 1.5x to 3x (``bands``:
both sides are step functions, so one row per interval where neither changes; this is where a plan with
whole budgets falls short between the targets), and draws ``<plot-dir>/frontier_<model>.png``.
``--merge`` adds the rows of earlier runs' ``--json`` dumps, so long calibrations need not run again.

Run (from the repository root)::

    python benchmarks/frontier.py                                   # both models, every family
    python benchmarks/frontier.py --models digits --families DBCache "DBCache+TaylorSeer O1" --per-class 1
    python benchmarks/frontier.py --quick                           # 2 thresholds, 1 per class, 10 steps
    python benchmarks/frontier.py --results --json /tmp/rows.json   # append to benchmarks/RESULTS.md, dump rows
    python benchmarks/frontier.py --models digits --families --merge /tmp/a.json /tmp/b.json  # tables of earlier runs

A new family is one more entry: ``FAMILIES["planned"] = fn`` with
``fn(spec, ctx) -> list[Point]``; ``run_frontier`` and ``pareto`` are importable for tests/tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))

import torch  # noqa: E402

import dit_cachepass as dcp  # noqa: E402
from dit_cachepass.config import CalibratorConfig  # noqa: E402


def _load_report() -> Callable:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_results", os.path.join(HERE, "_results.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.report


report = _load_report()

TARGETS = (1.5, 2.0, 2.5, 3.0)
THRESHOLDS = (0.08, 0.12, 0.18, 0.25, 0.35, 0.45, 0.6)
QUICK_THRESHOLDS = (0.12, 0.4)
GUIDANCE = 3.0
SSIM_KERNEL = 3
PLAN_FRACTIONS = (0.6, 0.5, 0.42, 0.36, 0.3, 0.25)  # planned family: computed steps / steps, one point each
BAR_RANGE = (1.5, 3.0)  # the "every ideal speedup from 1.5x to 3x"
CALL_FRACTIONS = (0.66, 0.6, 0.5, 0.4, 0.33, 0.28, 0.25)  # planned call: a skipped step costs nothing
REFINE_EVALS = 60  # planned call, refined: real calibration generations per budget


# ----------------------------------------------------------------------------- models

@dataclass
class ModelSpec:
    name: str
    load: Callable[[], torch.nn.Module]                                   # a fresh, never compiled model
    sample: Callable[[torch.nn.Module, torch.Tensor, int, int], torch.Tensor]  # (model, labels, seed, steps)
    accuracy: Callable[[torch.Tensor, torch.Tensor], float]              # (out, labels)
    eval_labels: torch.Tensor
    eval_seeds: list[int]
    cal_labels: torch.Tensor
    cal_seeds: list[int]


def digits_spec(per_class: int = 4, eval_seeds: Sequence[int] = (100, 101), cal_seeds: Sequence[int] = (0, 1, 2, 3)):
    from dit_cachepass.demo_model import classifier_accuracy, load_digits_dit, load_info, sample

    info = load_info()
    return ModelSpec("digits", lambda: load_digits_dit()[0],
                     lambda m, labels, seed, steps: sample(m, labels, steps=steps, guidance=GUIDANCE, seed=seed, info=info),
                     classifier_accuracy, torch.arange(10).repeat(per_class), list(eval_seeds),
                     torch.arange(9, -1, -1), list(cal_seeds))


def clips_spec(per_class: int = 4, eval_seeds: Sequence[int] = (100, 101), cal_seeds: Sequence[int] = (0, 1, 2, 3)):
    from dit_cachepass.demo_model.clips import classifier_accuracy, load_clips_wan, load_info, sample

    info = load_info()
    return ModelSpec("clips", lambda: load_clips_wan()[0],
                     lambda m, labels, seed, steps: sample(m, labels, steps=steps, guidance=GUIDANCE, seed=seed, info=info),
                     classifier_accuracy, torch.arange(10).repeat(per_class), list(eval_seeds),
                     torch.arange(9, -1, -1), list(cal_seeds))


MODELS = {"digits": digits_spec, "clips": clips_spec}


@dataclass
class CalibrationContext:
    """What a family may use to calibrate: the model spec, the step count, the CALIBRATION seeds and
    labels (never the evaluation ones), and the knob sweep asked for on the command line."""

    spec: ModelSpec
    steps: int
    seeds: list[int]
    labels: torch.Tensor
    thresholds: Sequence[float] = THRESHOLDS
    max_continuous: Sequence[int] = (-1, 2, 3)
    call_fractions: Optional[Sequence[float]] = None  # the whole-call families' budgets (None: theirs)
    earlier: Sequence["Row"] = ()  # rows of earlier runs (--merge): a refined family restarts from its plans

    def generate_one(self, model: torch.nn.Module, seed: int) -> torch.Tensor:
        """One calibration generation, scoped as one generation of the cached ``model``."""
        with dcp.generation(model):
            return self.spec.sample(model, self.labels, seed, self.steps)

    def generate(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """One generation per calibration seed (inside ``dcp.generation`` when ``model`` is cached)."""
        outs = []
        for seed in self.seeds:
            cached = isinstance(model.__dict__.get("forward"), dcp.api.CachedForward)
            with dcp.generation(model) if cached else contextlib.nullcontext():
                outs.append(self.spec.sample(model, self.labels, seed, self.steps))
        return outs


# ----------------------------------------------------------------------------- families

Point = tuple[str, dcp.DBCacheConfig, Optional[CalibratorConfig]]   # (label, cache_config, calibrator_config)


def _dbcache_family(calibrator: Callable[[], Optional[CalibratorConfig]]):
    def family(spec: ModelSpec, ctx: CalibrationContext) -> list[Point]:
        return [(f"F1B0 R{t:g} W2 MC{mc}",
                 dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=t,
                                   max_warmup_steps=2, max_continuous_cached_steps=mc), calibrator())
                for mc in ctx.max_continuous for t in ctx.thresholds]
    return family


def _dbprune(spec: ModelSpec, ctx: CalibrationContext) -> list[Point]:
    return [(f"F1B0 R{t:g} W2", dcp.DBPruneConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=t,
                                                   max_warmup_steps=2), None) for t in ctx.thresholds]


def _checked_family(calibrator: Callable[[], CalibratorConfig], tag: str):
    def family(spec: ModelSpec, ctx: CalibrationContext) -> list[Point]:
        """DBCache whose diff is a checked forecast (``forecast_check``): the Fn residual against
        the calibrator's forecast of it. Its diffs are forecast errors, smaller than DBCache's
        step-to-step diffs, hence the lower thresholds."""
        return [(f"F1B0 R{t:g} W2 MC{mc} {tag} FC",
                 dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=t,
                                   max_warmup_steps=2, max_continuous_cached_steps=mc, forecast_check=True),
                 calibrator())
                for mc in ctx.max_continuous for t in sorted({round(t / 3, 3) for t in ctx.thresholds})]
    return family


def _planned_family(whole_call: bool, fractions: Sequence[float], refine_evals: int = 0):
    def family(spec: ModelSpec, ctx: CalibrationContext) -> list[Point]:
        """A planned static schedule per budget (``planner.plan_steps``) on the CALIBRATION seeds'
        observed trajectory, with the calibrator (none, TaylorSeer O1 or O2) whose replayed path
        error is lowest there. ``whole_call``: the skipped steps skip the whole call and the
        plan forecasts the call's output (``skip_whole_call``), else the middle of the F1B0 loop.
        ``refine_evals``: then ``planner.refine`` the plans on real cached generations of the
        calibration seeds (their MSE against the uncached ones), the filler chosen by the same
        runs among ``planner.whole_call_fillers()`` (TaylorSeer O1 / O2 and DMD, each without
        ``correct_skipped``, with it (DC) and with it weighted (DC0.5)). ``ctx.call_fractions`` replaces a whole-call family's budgets.
        Refined plans of the same family in ``ctx.earlier`` (earlier runs, ``--merge``) at this
        budget and, through ``planner.neighbour_starts``, at the budgets one above and below are
        starts too, screened with their own fillers (their calibration runs are the same ones)."""
        from dit_cachepass.runtime.wholecall import WHOLE_CALL
        from dit_cachepass.tuning import planner

        model = spec.load()
        trajs = planner.observe(model, lambda: (ctx.generate_one(model, s) for s in ctx.seeds), whole_call=whole_call)
        traj = [t for n, t in trajs.items() if n.startswith(WHOLE_CALL) == whole_call]
        cals = {"reuse": None, "T1O1": dcp.TaylorSeerCalibratorConfig(taylorseer_order=1),
                "T1O2": dcp.TaylorSeerCalibratorConfig(taylorseer_order=2)}
        config = lambda mask, fix=None: dcp.DBCacheConfig(  # noqa: E731
            Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=0, steps_computation_mask=list(mask),
            steps_computation_policy="static", skip_whole_call=whole_call, **(fix or {}))
        if refine_evals:
            truth = torch.cat(ctx.generate(spec.load()))  # a never-compiled model: the uncached outputs
            fillers = {_filler_label(c, fix): (c, fix) for c, fix in planner.whole_call_fillers()}

            def error(mask: list[int], filler: tuple) -> float:
                dcp.compile(model, config(mask, filler[1]), calibrator_config=filler[0], backend="eager")
                return float(((torch.cat(ctx.generate(model)).float() - truth.float()) ** 2).mean())
        points = []
        for frac in (ctx.call_fractions or fractions) if whole_call else fractions:
            budget = max(2, round(frac * ctx.steps))
            plans = {n: planner.plan_steps(traj, budget, c) for n, c in cals.items()}
            name = min(plans, key=lambda n: plans[n][1])
            mask, cal, fix = plans[name][0], cals[name], {}
            if refine_evals:
                starts, screen = [plans[n][0] for n in plans], None
                earlier = [_plan_of(r) for r in ctx.earlier if r.family == "planned call, refined"]
                near = [(m, f) for k, m, f in earlier if abs(k - budget) == 1 and len(m) == ctx.steps and f in fillers]
                same = [(m, f) for k, m, f in earlier if k == budget and len(m) == ctx.steps and f in fillers]
                if near or same:
                    starts += [m for m, _ in same] + planner.neighbour_starts([m for m, _ in near], budget)
                    # each earlier plan's filler, and its calibrator with the weighted correction
                    tried = {f for _, f in near + same} | {f.split(" DC")[0] + " DC0.5" for _, f in near + same}
                    screen = sorted(list(fillers).index(f) for f in tried)
                got = planner.refine(starts, list(fillers.values()), error, screen=screen,
                                     max_evals=refine_evals + (len(starts) * len(screen) if screen else 0))
                mask, (cal, fix) = got.mask, got.filler
                name = next(n for n, f in fillers.items() if f is got.filler) + f" R{got.evals}"
            points.append((f"planned {budget}/{ctx.steps} {name} " + "".join(map(str, mask)), config(mask, fix),
                           cal))
        return points
    return family


def _filler_label(calibrator: CalibratorConfig, fix: dict) -> str:
    """``T1O1``, ``DMD DC`` (``correct_skipped``), ``T1O2 DC0.5`` (``correct_skipped_power=0.5``)."""
    name = "DMD" if isinstance(calibrator, dcp.DMDCalibratorConfig) else calibrator.strify()
    if fix.get("correct_skipped"):
        name += " DC" + (f"{fix['correct_skipped_power']:g}" if fix.get("correct_skipped_power") else "")
    return name


def _plan_of(row: "Row") -> tuple[int, list[int], str]:
    """(computed steps, mask, filler label) of a refined whole-call row, from its label
    ``planned 11/28 T1O1 DC R60 1101...``."""
    words = row.label.split()
    return int(words[1].split("/")[0]), [int(c) for c in words[-1]], " ".join(words[2:-2])


FAMILIES: dict[str, Callable[[ModelSpec, CalibrationContext], list[Point]]] = {
    "DBCache": _dbcache_family(lambda: None),
    "DBCache+TaylorSeer O1": _dbcache_family(lambda: dcp.TaylorSeerCalibratorConfig(taylorseer_order=1)),
    "DBCache+TaylorSeer O2": _dbcache_family(lambda: dcp.TaylorSeerCalibratorConfig(taylorseer_order=2)),
    "DBCache+FoCa": _dbcache_family(dcp.FoCaCalibratorConfig),
    "DBCache+DMD": _dbcache_family(dcp.DMDCalibratorConfig),
    "DBPrune": _dbprune,
}
CACHE_DIT_FAMILIES = tuple(FAMILIES)   # the anchors; families added later are compared against them
FAMILIES["checked"] = _checked_family(lambda: dcp.TaylorSeerCalibratorConfig(taylorseer_order=1), "T1O1")
FAMILIES["checked DMD"] = _checked_family(dcp.DMDCalibratorConfig, "DMD")
FAMILIES["planned"] = _planned_family(False, PLAN_FRACTIONS)
FAMILIES["planned call"] = _planned_family(True, CALL_FRACTIONS)
FAMILIES["planned call, refined"] = _planned_family(True, CALL_FRACTIONS, refine_evals=REFINE_EVALS)


# ----------------------------------------------------------------------------- measuring

@dataclass
class Row:
    family: str
    label: str
    speedup: float
    psnr: float
    ssim: float = float("nan")
    accuracy: float = float("nan")
    cached_steps: float = 0.0          # mean over eval seeds, first cached loop
    steps: int = 0


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((out.float() - ref.float()) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(out: torch.Tensor, ref: torch.Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    as_images = lambda x: x.float().reshape(-1, 1, *x.shape[-2:])   # (N,1,H,W) or clips per frame
    return float(structural_similarity_index_measure(as_images(out), as_images(ref), gaussian_kernel=False,
                                                     kernel_size=SSIM_KERNEL, data_range=1.0))


def references(spec: ModelSpec, steps: int) -> list[torch.Tensor]:
    model = spec.load()     # never compiled: the uncached truth
    return [spec.sample(model, spec.eval_labels, seed, steps) for seed in spec.eval_seeds]


def measure(spec: ModelSpec, model: torch.nn.Module, family: str, point: Point, refs: list[torch.Tensor],
            steps: int) -> Row:
    label, cache_config, calibrator_config = point
    dcp.compile(model, cache_config, calibrator_config=calibrator_config, backend="eager")
    outs, full, executed, cached = [], 0, 0, 0
    for seed in spec.eval_seeds:
        with dcp.generation(model):
            outs.append(spec.sample(model, spec.eval_labels, seed, steps))
        s = dcp.summary(model)
        full, executed, cached = full + s.full_flops, executed + s.executed_flops, cached + len(s.cached_steps)
    out, ref = torch.cat(outs), torch.cat(refs)
    labels = spec.eval_labels.repeat(len(spec.eval_seeds))
    return Row(family, label, full / executed if executed else 1.0, psnr(out, ref), ssim(out, ref),
               spec.accuracy(out, labels), cached / len(spec.eval_seeds), steps)


def run_frontier(spec: ModelSpec, families: Sequence[str], steps: int = 28, thresholds: Sequence[float] = THRESHOLDS,
                 max_continuous: Sequence[int] = (-1, 2, 3), progress: bool = True,
                 refs: Optional[list[torch.Tensor]] = None,
                 call_fractions: Optional[Sequence[float]] = None, earlier: Sequence[Row] = ()) -> list[Row]:
    """Every point of every family in ``families`` on ``spec``'s eval seeds; one Row per point.
    ``earlier``: rows of earlier runs, which a refined family may start from."""
    from tqdm import tqdm

    ctx = CalibrationContext(spec, steps, spec.cal_seeds, spec.cal_labels, thresholds, max_continuous,
                             call_fractions, earlier)
    refs = refs if refs is not None else references(spec, steps)
    work = [(f, p) for f in families for p in FAMILIES[f](spec, ctx)]
    model = spec.load()     # one model, recompiled with each point's config
    rows = []
    for fam, point in tqdm(work, desc=spec.name, disable=not progress, leave=False):
        rows.append(measure(spec, model, fam, point, refs, steps))
    return rows


def pareto(rows: Sequence[Row]) -> list[Row]:
    """Rows not dominated in (speedup, PSNR): no other row is >= in both and > in one. By speedup."""
    def dominated(r):
        return any(q.speedup >= r.speedup and q.psnr >= r.psnr and (q.speedup > r.speedup or q.psnr > r.psnr)
                   for q in rows)
    return sorted((r for r in rows if not dominated(r)), key=lambda r: (r.speedup, -r.psnr))


def best_at(rows: Sequence[Row], target: float, tol: float = 5e-3) -> Optional[Row]:
    """The best-PSNR row at >= ``target`` speedup (``tol``: the tables' rounding, so 1.4999x counts as 1.50x)."""
    ok = [r for r in rows if r.speedup + tol >= target]
    return max(ok, key=lambda r: r.psnr) if ok else None


@dataclass
class Band:
    """A speedup interval (lo, hi] on which the best row at >= speedup of each side is the same."""
    lo: float
    hi: float
    anchor: Optional[Row]
    new: Optional[Row]

    @property
    def margin(self) -> float:
        if self.anchor is None:
            return math.inf
        return -math.inf if self.new is None else self.new.psnr - self.anchor.psnr


def bands(anchors: Sequence[Row], new: Sequence[Row], lo: float = 1.5, hi: float = 3.0) -> list[Band]:
    """The issue's bar read literally: at EVERY speedup x in [lo, hi], the best new row at >= x
    against the best anchor row at >= x. Both sides are step functions of x that change only at a
    row's speedup, so the margin is constant between consecutive speedups; one Band per interval
    where neither side's best row changes (the first band is closed at ``lo``)."""
    eps = 1e-9
    cuts = sorted({r.speedup for r in (*anchors, *new) if lo < r.speedup < hi} | {hi})
    out: list[Band] = []
    left = lo
    for x in cuts:
        a = max((r for r in anchors if r.speedup >= x - eps), key=lambda r: r.psnr, default=None)
        n = max((r for r in new if r.speedup >= x - eps), key=lambda r: r.psnr, default=None)
        if out and out[-1].anchor is a and out[-1].new is n:
            out[-1].hi = x
        else:
            out.append(Band(left, x, a, n))
        left = x
    return out


# ----------------------------------------------------------------------------- output

def _db(x: float) -> str:
    return "inf" if x == math.inf else "-" if x is None or math.isnan(x) else f"{x:.2f}"


def tables(spec: ModelSpec, rows: list[Row], ref_acc: float, steps: int) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160, record=True, file=io.StringIO())   # rendered here, printed by report()
    front = {id(r) for f in dict.fromkeys(r.family for r in rows) for r in pareto([q for q in rows if q.family == f])}
    t = Table(title=f"{spec.name}: {steps} steps, eval seeds {spec.eval_seeds}, {len(spec.eval_labels)} labels/seed "
                    f"(uncached accuracy {ref_acc:.3f})", caption="* = on its family's Pareto frontier in (speedup, PSNR)")
    for h in ("family", "point", "ideal speedup", "PSNR dB", f"SSIM ({SSIM_KERNEL}x{SSIM_KERNEL})", "accuracy", "cached steps"):
        t.add_column(h, justify="left" if h in ("family", "point") else "right")
    for r in rows:
        t.add_row(r.family, ("* " if id(r) in front else "  ") + r.label, f"{r.speedup:.2f}x", _db(r.psnr),
                  f"{r.ssim:.4f}", f"{r.accuracy:.3f}", f"{r.cached_steps:g}/{r.steps}")
    console.print(t)

    fams = list(dict.fromkeys(r.family for r in rows))
    anchors = [f for f in fams if f in CACHE_DIT_FAMILIES]
    new = [f for f in fams if f not in CACHE_DIT_FAMILIES]
    s = Table(title=f"{spec.name}: best PSNR (dB) at >= target ideal speedup",
              caption=f"cache-dit = best of the anchor families {anchors}")
    s.add_column("target", justify="right")
    for h in [*fams, "cache-dit", *(f"{f} - cache-dit" for f in new)]:
        s.add_column(h, justify="right")
    for target in TARGETS:
        best = {f: best_at([r for r in rows if r.family == f], target) for f in fams}
        anchor = best_at([r for r in rows if r.family in anchors], target)
        margins = [("-" if best[f] is None or anchor is None else f"{best[f].psnr - anchor.psnr:+.2f}") for f in new]
        s.add_row(f"{target:g}x", *(_db(best[f].psnr) if best[f] else "-" for f in fams),
                  _db(anchor.psnr) if anchor else "-", *margins)
    console.print(s)
    if anchors and new:
        console.print(_bar_table(spec, [r for r in rows if r.family in anchors], [r for r in rows if r.family in new]))
    return console.export_text()


def _bar_table(spec: ModelSpec, anchors: list[Row], new: list[Row], need: float = 3.0):
    from rich.table import Table

    bs = bands(anchors, new, *BAR_RANGE)
    low = min(bs, key=lambda b: b.margin)
    short = [b for b in bs if b.margin < need]
    t = Table(title=f"{spec.name}: at every speedup x in [{BAR_RANGE[0]:g}, {BAR_RANGE[1]:g}]x, best new row at >= x "
                    f"vs best cache-dit row at >= x",
              caption=f"lowest margin {low.margin:+.2f} dB on ({low.lo:.3f}, {low.hi:.3f}]x; "
                      + (f"{len(short)} band(s) under +{need:g} dB" if short else f"every band >= +{need:g} dB"))
    for h in ("speedup band", "best cache-dit at >= x", "best new at >= x", "margin"):
        t.add_column(h, justify="left" if h.startswith("best") else "right")
    row = lambda r: "-" if r is None else f"{r.psnr:.2f} ({r.family}, {r.speedup:.3f}x)"  # noqa: E731
    for b in bs:
        t.add_row(f"({b.lo:.3f}, {b.hi:.3f}]", row(b.anchor), row(b.new),
                  f"{b.margin:+.2f}" + (" <" if b.margin < need else ""))
    return t


def plot(spec: ModelSpec, rows: list[Row], path: str, steps: int) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r.psnr for r in rows if math.isfinite(r.psnr)]
    cap = (max(finite) + 5.0) if finite else 60.0     # identical outputs (PSNR inf) are drawn at the cap
    y = lambda r: r.psnr if math.isfinite(r.psnr) else cap
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, fam in enumerate(dict.fromkeys(r.family for r in rows)):
        pts = [r for r in rows if r.family == fam]
        color = f"C{i}"
        ax.scatter([r.speedup for r in pts], [y(r) for r in pts], color=color, alpha=0.25, s=14)
        front = pareto(pts)
        ax.plot([r.speedup for r in front], [y(r) for r in front], "-o", color=color, label=fam, ms=5)
    ax.set_xlabel("ideal speedup (uncached FLOPs / executed FLOPs)")
    ax.set_ylabel("PSNR vs uncached output (dB)")
    ax.set_title(f"{spec.name}: quality vs speedup, {steps} steps, eval seeds {spec.eval_seeds} "
                 f"(lines: Pareto points; inf drawn at {cap:.0f} dB)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--per-class", type=int, default=4, help="eval labels: 0-9 repeated this many times per seed")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[100, 101])
    p.add_argument("--cal-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--families", nargs="*", default=None,
                   help=f"subset of {list(FAMILIES)} (default: all; none with --merge: tables of the merged rows only)")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="rows of earlier runs (their --json) to add to this run's tables and plot; they must have "
                        "used the same --steps, --per-class and --eval-seeds. A point (family and label) measured "
                        "again keeps its last measurement: this run's, else the last file's")
    p.add_argument("--thresholds", type=float, nargs="+", default=None, help=f"sweep (default {list(THRESHOLDS)})")
    p.add_argument("--max-continuous", type=int, nargs="+", default=None,
                   help="max_continuous_cached_steps sweep of the DBCache families (default -1 2 3)")
    p.add_argument("--call-fractions", type=float, nargs="+", default=None, metavar="F",
                   help=f"computed steps / steps of the whole-call plans, one point each (default {list(CALL_FRACTIONS)})")
    p.add_argument("--quick", action="store_true", help="2 thresholds, 1 per class, 10 steps, MC -1 only (tests)")
    p.add_argument("--plot-dir", default="benchmarks")
    p.add_argument("--results", nargs="?", const="benchmarks/RESULTS.md", default=None)
    p.add_argument("--json", default=None, metavar="PATH", help="dump every row")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.per_class = 10, 1
        args.thresholds = args.thresholds or list(QUICK_THRESHOLDS)
        args.max_continuous = args.max_continuous or [-1]
    args.thresholds = args.thresholds or list(THRESHOLDS)
    args.max_continuous = args.max_continuous or [-1, 2, 3]
    if args.families is None or (not args.families and not args.merge):
        args.families = list(FAMILIES)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; known: {list(FAMILIES)}")
    return args


def merged_rows(paths: Sequence[str], model: str, steps: int) -> list[Row]:
    """The rows of ``model`` in earlier runs' ``--json`` dumps (a run's rows stay together, in order)."""
    rows = []
    for path in paths:
        with open(path) as f:
            for d in json.load(f).get(model, []):
                r = Row(**{k: float(v) if isinstance(v, str) and k != "family" and k != "label" else v
                           for k, v in d.items()})
                if r.steps != steps:
                    raise SystemExit(f"--merge {path}: its {model} rows ran {r.steps} steps, this run {steps}; "
                                     f"merge runs of the same --steps")
                rows.append(r)
    return rows


def latest_refined(rows: Sequence[Row]) -> list[Row]:
    """``rows`` with one ``planned call, refined`` row per budget: the last one (rows in run order).
    A restart scores the earlier plans of its budget on the calibration seeds among its starts, so
    its result is the calibration's choice; keeping the best *evaluation* PSNR of several runs
    instead would choose on the held-out seeds."""
    last = {_plan_of(r)[0]: r for r in rows if r.family == "planned call, refined"}
    return [r for r in rows if r.family != "planned call, refined" or last[_plan_of(r)[0]] is r]


def main(argv: Optional[Sequence[str]] = None) -> dict[str, list[Row]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    all_rows: dict[str, list[Row]] = {}
    for name in args.models:
        spec = MODELS[name](args.per_class, args.eval_seeds, args.cal_seeds)
        assert not set(spec.eval_seeds) & set(spec.cal_seeds), "calibration and evaluation seeds overlap"
        print(f"[{name}] calibration: seeds {spec.cal_seeds}, labels {spec.cal_labels.tolist()}; "
              f"evaluation: seeds {spec.eval_seeds}, labels 0-9 x {args.per_class}; {args.steps} steps")
        refs = references(spec, args.steps)
        ref_acc = spec.accuracy(torch.cat(refs), spec.eval_labels.repeat(len(spec.eval_seeds)))
        earlier = merged_rows(args.merge, name, args.steps)
        rows = run_frontier(spec, args.families, args.steps, args.thresholds, args.max_continuous, refs=refs,
                            call_fractions=args.call_fractions, earlier=earlier)
        all_rows[name] = rows
        rows = latest_refined(list({(r.family, r.label): r for r in [*earlier, *rows]}.values()))
        text = tables(spec, rows, ref_acc, args.steps)
        if args.plot_dir:
            os.makedirs(args.plot_dir, exist_ok=True)
            text += f"\nplot: {plot(spec, rows, os.path.join(args.plot_dir, f'frontier_{name}.png'), args.steps)}\n"
        report(f"Quality vs speedup frontier: {name}", f"CPU, {torch.get_num_threads()} threads",
               "```\n" + text + "```" if args.results else text, args.results, argv)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({m: [{k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v))
                            for k, v in asdict(r).items()} for r in rows] for m, rows in all_rows.items()}, f, indent=1)
    return all_rows


if __name__ == "__main__":
    main()
