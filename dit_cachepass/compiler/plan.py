"""Plan: matched loops + config -> which blocks of each loop are Fn, middle and Bn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..config import DBCacheConfig, CalibratorConfig
from .matcher import BlockLoop


@dataclass
class LoopPlan:
    loop: BlockLoop
    config: DBCacheConfig
    fn: range
    middle: range
    bn: range
    calibrator_config: Optional[CalibratorConfig] = None

    @property
    def name(self) -> str:
        return self.loop.name

    @property
    def per_block(self) -> bool:
        """DBPrune decides per middle block, so its middle is split per block."""
        return self.config.cache_type == "DBPrune"

    def role(self, i: int) -> str:
        return "Fn" if i in self.fn else "middle" if i in self.middle else "Bn"


class SkippedLoop(str):
    """Why a matched loop is not cached (a ``str``, as every skip reason), carrying the loop's
    plan (``plan.middle`` empty) so that ``explain`` can still list its pattern, blocks and streams."""

    plan: LoopPlan

    def __new__(cls, text: str, plan: LoopPlan) -> "SkippedLoop":
        obj = super().__new__(cls, text)
        obj.plan = plan
        return obj

    def __reduce__(self) -> tuple:  # copies and pickles: the plain reason
        return (str, (str(self),))


def _suggest(n: int, f: int, b: int) -> str:
    """A config that leaves a middle: Fn=1 (the usual F1), Bn kept when it still fits."""
    f2 = min(f, 1)
    b2 = b if f2 + b < n else max(0, n - 1 - f2)
    return f"Fn_compute_blocks={f2}" + (f", Bn_compute_blocks={b2}" if b2 != b else "")


@dataclass
class CachePlan:
    loops: list[LoopPlan]
    skipped: list[str] = field(default_factory=list)  # loops left uncached, with the reason


def plan(loops: list[BlockLoop], configs: Sequence[tuple[DBCacheConfig, Optional[CalibratorConfig]]]
         ) -> CachePlan:
    """Fn = the first ``Fn_compute_blocks`` blocks, Bn = the last ``Bn_compute_blocks``, each
    loop with its own (config, calibrator) (ParamsModifier overrides are already applied).

    Unlike cache-dit 1.5.3 (which accepts F + B > N and then runs overlapping segments), a
    loop whose Fn and Bn leave no middle is not cached and the plan says why.
    """
    out = CachePlan(loops=[])
    for loop, (config, calibrator) in zip(loops, configs):
        n, f, b = len(loop), config.Fn_compute_blocks, config.Bn_compute_blocks
        if f + b >= n:
            fn = range(0, min(f, n))
            out.skipped.append(SkippedLoop(
                f"{loop.name}: Fn_compute_blocks={f} + Bn_compute_blocks={b} >= {n} blocks leaves no middle, nothing to cache; "
                f"try {_suggest(n, f, b)} (Fn + Bn < {n})",
                LoopPlan(loop, config, fn, range(fn.stop, fn.stop), range(fn.stop, n), calibrator)))
            continue
        out.loops.append(LoopPlan(loop, config, range(0, f), range(f, n - b), range(n - b, n), calibrator))
    return out
