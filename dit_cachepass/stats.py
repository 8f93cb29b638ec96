"""Summary: what each loop decided, per step, readable as a table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .runtime.state import LoopState, StepRecord


@dataclass
class LoopSummary:
    name: str
    steps: list[StepRecord]  # current (or last finished) generation
    generations: int

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

    def __init__(self, loops: list[LoopSummary], config_tag: str):
        self.loops, self.config_tag = loops, config_tag

    @classmethod
    def from_states(cls, states: dict, config_tag: str) -> "Summary":
        loops = []
        for s in states.values():
            steps = s.records if s.records or not s.history else s.history[-1]
            loops.append(LoopSummary(s.name, list(steps), len(s.history) + (1 if s.records else 0)))
        return cls(loops, config_tag)

    @property
    def cached_steps(self) -> list[int]:
        return self.loops[0].cached_steps if self.loops else []

    def __repr__(self) -> str:
        parts = ", ".join(f"{l.name}: {len(l.cached_steps)}/{len(l.steps)} cached" for l in self.loops)
        return f"Summary({self.config_tag}; {parts or 'no cached loop ran'})"

    def __str__(self) -> str:
        if not self.loops:
            return f"dit_cachepass summary ({self.config_tag}): no cached loop has run yet."
        lines = [f"dit_cachepass summary ({self.config_tag})"]
        head = f"| {'Loop':<40} | Steps | Cached | {'Diffs P00':>9} | {'P25':>6} | {'P50':>6} | {'P75':>6} | {'P95':>6} | {'Max':>6} |"
        lines += [head, "|" + "-" * (len(head) - 2) + "|"]
        for l in self.loops:
            p = l.percentiles()
            cells = [f"{p[k]:.3f}" for k in ("P00", "P25", "P50", "P75", "P95", "Max")] if p else ["-"] * 6
            lines.append(f"| {l.name[:40]:<40} | {len(l.steps):>5} | {len(l.cached_steps):>6} | {cells[0]:>9} | "
                         + " | ".join(f"{c:>6}" for c in cells[1:]) + " |")
        for l in self.loops:
            marks = "".join("C" if r.cached else "." for r in l.steps)
            lines.append(f"{l.name}: cached steps {l.cached_steps}  timeline [{marks}] (C = cached)")
        return "\n".join(lines)
