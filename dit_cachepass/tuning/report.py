"""``TuneReport``: what ``dcp.tune`` proposed, predicted and verified, per loop and step."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import CalibratorConfig, DBCacheConfig


@dataclass
class StepRow:
    step: int
    observed_diff: Optional[float]  # uncached run, vs the previous step
    predicted_cached: bool
    predicted_diff: Optional[float]  # simulation, vs the simulated last computed step
    actual_cached: Optional[bool]
    actual_diff: Optional[float]
    actual_reason: str = ""


@dataclass
class LoopRows:
    name: str
    rows: list[StepRow]

    @property
    def predicted_cached_steps(self) -> list[int]:
        return [r.step for r in self.rows if r.predicted_cached]

    @property
    def cached_steps(self) -> list[int]:
        return [r.step for r in self.rows if r.actual_cached]


@dataclass
class VerifyRun:
    threshold: float
    predicted_cached: int
    cached: int
    predicted_speedup: float
    speedup: float
    step_speedup: float
    flops_speedup: Optional[float]
    rel_l1: Optional[float]
    psnr: Optional[float]


@dataclass
class TuneReport:
    """What ``dcp.tune`` found. ``config``: the proposed ``DBCacheConfig`` (the module is left
    compiled with it); ``ideal_speedup``: the *verified* speedup in ``metric`` units;
    ``predicted_speedup``: the simulation's. ``loops[i].rows``: per step, observed diff,
    predicted and actual decision. ``runs``: every verify generation (more than one when the
    threshold was refined). ``output`` / ``reference_output``: what ``call`` returned cached /
    uncached."""

    config: DBCacheConfig
    target_speedup: float
    metric: str
    predicted_speedup: float
    ideal_speedup: float
    step_speedup: float
    flops_speedup: Optional[float]
    reached: bool
    loops: list[LoopRows]
    runs: list[VerifyRun]
    approximation: str  # "pairwise" (residuals kept) or "cumulative" (consecutive diffs only)
    rel_l1: Optional[float] = None
    psnr: Optional[float] = None
    output: Any = None
    reference_output: Any = None
    notes: list[str] = field(default_factory=list)
    #: the calibrator of the verified run (None: none); ``dcp.compile(m, report.config,
    #: calibrator_config=report.calibrator_config)`` reproduces it
    calibrator_config: Optional[CalibratorConfig] = None
    #: "dbcache" (threshold decisions) or "planned" (a static schedule from the observed run)
    policy: str = "dbcache"
    #: every policy verified: (policy, config tag, speedup, PSNR, rel. L1)
    candidates: list = field(default_factory=list)

    @property
    def predicted_cached_steps(self) -> list[int]:
        return self.loops[0].predicted_cached_steps if self.loops else []

    @property
    def cached_steps(self) -> list[int]:
        return self.loops[0].cached_steps if self.loops else []

    def __repr__(self) -> str:
        return (f"TuneReport({self.config.strify()}; target {self.target_speedup:g}x {self.metric}, predicted "
                f"{self.predicted_speedup:.2f}x, verified {self.ideal_speedup:.2f}x)")

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        buf = io.StringIO()
        con = Console(file=buf, width=120, force_terminal=False, color_system=None)
        c = self.config
        con.print(f"dcp.tune: target {self.target_speedup:g}x ({self.metric} speedup) -> {c.strify()}")
        con.print(f"  residual_diff_threshold={c.residual_diff_threshold:.4g}, max_warmup_steps={c.max_warmup_steps}, "
                  f"max_continuous_cached_steps={c.max_continuous_cached_steps}")
        flops = f", FLOPs {self.flops_speedup:.2f}x" if self.flops_speedup is not None else ""
        con.print(f"  speedup: predicted {self.predicted_speedup:.2f}x, verified {self.ideal_speedup:.2f}x "
                  f"({'reaches' if self.reached else 'SHORT OF'} the target; steps {self.step_speedup:.2f}x{flops})")
        err = []
        if self.rel_l1 is not None:
            err.append(f"rel. L1 {self.rel_l1:.4f}")
        if self.psnr is not None:
            err.append(f"PSNR {self.psnr:.1f} dB")
        if err:
            con.print(f"  output vs uncached: {', '.join(err)}")
        con.print(f"  prediction: {'pairwise diffs of the observed residuals' if self.approximation == 'pairwise' else 'summed consecutive diffs (residuals not kept)'}"
                  "; approximate once a step is cached (the real trajectory drifts)")
        if len(self.candidates) > 1:
            con.print("  policies verified: " + "; ".join(
                f"{p} {sp:.2f}x PSNR {_fmt(ps, '.1f')} dB" for p, _, sp, ps, _ in self.candidates)
                + f" -> {self.policy}" + (f" + {self.calibrator_config.strify()}" if self.calibrator_config else ""))
        for note in self.notes:
            con.print(f"  note: {note}")
        if len(self.runs) > 1:
            t = Table(title="verify runs")
            for col in ("run", "threshold", "cached (pred / actual)", "speedup (pred / actual)", "rel. L1", "PSNR"):
                t.add_column(col, justify="right")
            for i, r in enumerate(self.runs):
                t.add_row(str(i + 1), f"{r.threshold:.4g}", f"{r.predicted_cached} / {r.cached}",
                          f"{r.predicted_speedup:.2f}x / {r.speedup:.2f}x", _fmt(r.rel_l1, ".4f"), _fmt(r.psnr, ".1f"))
            con.print(t)
        for lp in self.loops:
            t = Table(title=f"{lp.name}: predicted vs actual (C = cached, . = computed)")
            for col in ("step", "observed diff", "pred. diff", "pred.", "actual diff", "actual", "reason"):
                t.add_column(col, justify="left" if col == "reason" else "right")
            for r in lp.rows:
                t.add_row(str(r.step), _fmt(r.observed_diff, ".3f"), _fmt(r.predicted_diff, ".3f"),
                          "C" if r.predicted_cached else ".", _fmt(r.actual_diff, ".3f"),
                          "-" if r.actual_cached is None else "C" if r.actual_cached else ".", r.actual_reason)
            con.print(t)
            con.print(f"  predicted cached {lp.predicted_cached_steps} ({len(lp.predicted_cached_steps)}/{len(lp.rows)})")
            con.print(f"  actual cached    {lp.cached_steps} ({len(lp.cached_steps)}/{len(lp.rows)})")
        return buf.getvalue().rstrip()


def _fmt(v: Optional[float], spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)
