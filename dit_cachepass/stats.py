"""Summary: what each loop decided, per step, readable as a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .runtime.state import StepRecord
from .runtime.wholecall import WHOLE_CALL


@dataclass
class LoopSummary:
    name: str
    steps: list[StepRecord]  # current (or last finished) generation
    generations: int  # generations this loop and branch ran in (history keeps the last few)
    piece_flops: dict = field(default_factory=dict)  # None (middle) or block id -> FLOPs of one run

    @property
    def middle_flops(self) -> int:
        return sum(self.piece_flops.values())

    @property
    def skipped_flops(self) -> int:
        return sum(self.piece_flops.get(k, 0) for r in self.steps for k in r.skipped)

    @property
    def pruned_blocks(self) -> int:
        return sum(len(r.skipped) for r in self.steps if None not in r.skipped)

    @property
    def cached_steps(self) -> list[int]:
        return [r.step for r in self.steps if r.cached]

    @property
    def computed_steps(self) -> list[int]:
        return [r.step for r in self.steps if not r.cached]

    @property
    def diffs(self) -> dict[int, float]:
        return {r.step: r.diff for r in self.steps if r.diff is not None}

    def percentiles(self) -> Optional[dict[str, float]]:
        vals = np.array(list(self.diffs.values()), dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            return None
        q = np.percentile(vals, [0, 25, 50, 75, 95])
        return {"P00": q[0], "P25": q[1], "P50": q[2], "P75": q[3], "P95": q[4],
                "Min": vals.min(), "Max": vals.max()}


class Summary:
    """``summary.cached_steps`` = cached steps of the first loop in the current generation."""

    def __init__(self, loops: list[LoopSummary], config_tag: str, call_flops: int = 0, calls: int = 0,
                 threshold: Optional[float] = None):
        self.loops, self.config_tag, self.threshold = loops, config_tag, threshold
        self.call_flops, self.calls = call_flops, calls

    @classmethod
    def from_session(cls, session) -> "Summary":
        runner = session.runners[-1] if session.runners else None
        flops = (runner.piece_flops() if runner is not None else []) or []
        middle: dict[str, dict] = {}
        if runner is not None:
            for piece, f in zip(runner.prog.pieces, flops):
                if piece.kind == "middle":
                    middle.setdefault(runner.loop_names[piece.loop], {})[piece.block] = f
        middle[WHOLE_CALL] = {None: sum(flops)}  # a skipped whole call saves all of it
        loops, names = [], []
        # the current generation's loops; a branch that did not run in it (a pipeline without
        # CFG after one with it) is not shown with an older generation's records
        current = any(s.records for s in session.states.values())
        for (name, _branch), s in session.states.items():
            if current and not s.records:
                continue
            steps = s.records if s.records or not s.history else s.history[-1]
            loops.append(LoopSummary(s.name, list(steps), s.finished + (1 if s.records else 0),
                                     middle.get(name, {})))
            names.append(name)
        calls = sum(len(l.steps) for name, l in zip(names, loops) if name == names[0])
        return cls(loops, session.config.strify(), sum(flops), calls, session.config.threshold)

    @property
    def full_flops(self) -> int:
        """FLOPs of the same calls without the cache (counted per piece with FlopCounterMode)."""
        return self.call_flops * self.calls

    @property
    def executed_flops(self) -> int:
        return self.full_flops - sum(l.skipped_flops for l in self.loops)

    @property
    def ideal_speedup(self) -> float:
        return self.full_flops / self.executed_flops if self.executed_flops else 1.0

    @property
    def cached_steps(self) -> list[int]:
        return self.loops[0].cached_steps if self.loops else []

    def plot(self, path: str, threshold: Optional[float] = None) -> str:
        """Per-step timeline of every loop: the diff against the threshold, cached steps marked.
        Needs matplotlib (``pip install matplotlib``). Returns ``path``."""
        threshold = self.threshold if threshold is None else threshold
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(self.loops) or 1, 1, figsize=(8, 2.4 * max(1, len(self.loops))),
                                 squeeze=False)
        for ax, loop in zip(axes[:, 0], self.loops):
            steps = [r.step for r in loop.steps]
            diffs = [r.diff if r.diff is not None else float("nan") for r in loop.steps]
            ax.plot(steps, diffs, "o-", color="tab:blue", label="rel. L1 diff of Fn residual")
            for r in loop.steps:
                if r.cached:
                    ax.axvspan(r.step - 0.5, r.step + 0.5, color="tab:green", alpha=0.2, lw=0)
            if threshold is not None:
                ax.axhline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:g}")
            ax.set_title(f"{loop.name}: {len(loop.cached_steps)}/{len(loop.steps)} steps cached (green)")
            ax.set_xlabel("step")
            ax.legend(loc="upper right", fontsize=8)
        fig.suptitle(f"dit_cachepass {self.config_tag}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def __repr__(self) -> str:
        parts = ", ".join(f"{l.name}: {len(l.cached_steps)}/{len(l.steps)} cached" for l in self.loops)
        return f"Summary({self.config_tag}; {parts or 'no cached loop ran'})"

    def __str__(self) -> str:
        if not self.loops:
            return f"dit_cachepass summary ({self.config_tag}): no cached loop has run yet."
        lines = [f"dit_cachepass summary ({self.config_tag})"]
        cols = " | ".join(f"{c:>6}" for c in ("P25", "P50", "P75", "P95", "Max"))
        head = f"| {'Loop':<40} | Steps | Cached | {'Diffs P00':>9} | {cols} |"
        lines += [head, "|" + "-" * (len(head) - 2) + "|"]
        for l in self.loops:
            p = l.percentiles()
            cells = [f"{p[k]:.3f}" for k in ("P00", "P25", "P50", "P75", "P95", "Max")] if p else ["-"] * 6
            lines.append(f"| {l.name[:40]:<40} | {len(l.steps):>5} | {len(l.cached_steps):>6} | {cells[0]:>9} | "
                         + " | ".join(f"{c:>6}" for c in cells[1:]) + " |")
        for l in self.loops:
            marks = "".join("C" if r.cached else "." for r in l.steps)
            lines.append(f"{l.name}: cached steps {l.cached_steps}  timeline [{marks}] (C = cached)")
            if l.pruned_blocks:
                lines.append(f"{l.name}: {l.pruned_blocks} block runs pruned "
                             f"(per step: {[len(r.skipped) for r in l.steps]})")
        if self.full_flops:
            lines.append(f"FLOPs: executed {self.executed_flops / 1e9:,.3f} G of {self.full_flops / 1e9:,.3f} G "
                         f"over {self.calls} calls (ideal speedup {self.ideal_speedup:.2f}x)")
        return "\n".join(lines)
