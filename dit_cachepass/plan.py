"""Plan: matched loops + config -> which blocks of each loop are Fn, middle and Bn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from .config import DBCacheConfig, CalibratorConfig
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
            out.skipped.append(
                f"{loop.name}: Fn_compute_blocks={f} + Bn_compute_blocks={b} >= {n} blocks leaves no "
                f"middle to cache; lower them so that Fn + Bn < {n}")
            continue
        out.loops.append(LoopPlan(loop, config, range(0, f), range(f, n - b), range(n - b, n), calibrator))
    return out
