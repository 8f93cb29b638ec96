"""``dcp.explain``: which block loops the pass finds in a model, how it would split and cache
each, or exactly why it caches nothing.

Every loop found is listed with its pattern, blocks and streams, also when the config leaves
it no middle (it then says which config would). When nothing is found the report says which
of these it is: no transformer block list (``matcher.NO_BLOCK_LIST``: an MLP's layers, a UNet's
stages), graph breaks that keep the loop out of every graph, autocast / grad-mode regions that
cannot be re-entered per piece, or a module wrapped in ``torch.compile`` (nesting).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .backend import analyse
from .errors import StageError
from .runtime.blockpath import trace_block_calls
from .compiler.capture import _isolated_forward, _list_lengths
from .config import DBCacheConfig
from .compiler.matcher import NO_BLOCK_LIST
from .runtime.paths import CAPTURE_FLAGS, NESTED_FIX, block_path_may_help, block_path_report, graph_broken
from .compiler.plan import SkippedLoop
from .runtime.session import _ATTR, GraphReport, Session


def _rng(b: list[str]) -> str:
    return "-" if not b else b[0] if len(b) == 1 else f"{b[0]} .. {b[-1]} ({len(b)})"


@dataclass
class LoopReport:
    name: str
    lists: list[str]
    pattern: int
    patterns: dict[str, int]
    fn_blocks: list[str]
    middle_blocks: list[str]
    bn_blocks: list[str]
    streams: int
    reason: str = ""  # why this loop, although found, is not cached (empty: it is cached)

    @property
    def cached(self) -> bool:
        return not self.reason

    @property
    def blocks(self) -> list[str]:
        return self.fn_blocks + self.middle_blocks + self.bn_blocks

    def __str__(self) -> str:
        pats = ", ".join(f"{k}: P{v}" for k, v in self.patterns.items())
        head = f"loop {self.name} [{pats}; {self.streams} stream(s)]"
        if self.reason:
            why = self.reason[len(self.name) + 2:] if self.reason.startswith(f"{self.name}: ") else self.reason
            return f"{head}, found but NOT cached\n    blocks: {_rng(self.blocks)}\n    why: {why}"
        return (f"{head}\n    Fn: {_rng(self.fn_blocks)}\n    middle (cached): {_rng(self.middle_blocks)}\n"
                f"    Bn: {_rng(self.bn_blocks)}")


@dataclass
class ExplainReport:
    loops: list[LoopReport]  # the loops that would be cached
    graphs: int
    path: str = "-"  # "graph", "graph (scalar/dynamic-output capture)", "block"; "-" when nothing is cached
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # every skip reason (found loops' included)
    uncached_loops: list[LoopReport] = field(default_factory=list)  # found, left uncached by the config

    @property
    def cached(self) -> bool:
        return bool(self.loops)

    @property
    def found(self) -> list[LoopReport]:
        """Every loop found, cached or not."""
        return self.loops + self.uncached_loops

    def __str__(self) -> str:
        lines = [f"dit_cachepass.explain: {self.graphs} graph(s), {len(self.found)} loop(s) found, "
                 f"{len(self.loops)} cached, path: {self.path}"]
        lines += [str(lp) for lp in self.found]
        shown = {lp.reason for lp in self.uncached_loops}
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  not cached: {r}" for r in self.reasons + self.skipped if r not in shown]
        if not self.loops:
            lines.append("  -> the model would run uncached (strict=True raises)")
        return "\n".join(lines)


def _graph_breaks(module: torch.nn.Module, prior: Optional[Callable], args: tuple, kwargs: dict) -> list[str]:
    """Why dynamo cannot capture the forward in one graph (its first graph break), if it can't."""
    try:
        with torch.no_grad():
            torch.compile(_isolated_forward(module, prior), backend="eager", fullgraph=True)(*args, **kwargs)
    except Exception as err:  # dynamo's Unsupported / UserError carry the reason and location
        lines = [l.strip() for l in str(err).splitlines() if l.strip()]
        where = next((l for l in lines if l.startswith("File ")), "")
        return [f"graph break: {lines[0] if lines else type(err).__name__} {where}".strip(),
                "no graph holds the whole block loop: a graph break inside it, or one after which "
                "dynamo runs whole frames eagerly, keeps it out of every graph; try "
                "torch._dynamo.config.capture_scalar_outputs=True / capture_dynamic_output_shape_ops=True, "
                "or remove the data-dependent Python branch"]
    return []


def _loop_report(lp: Any, reason: str = "") -> LoopReport:
    names = [str(b.ref) for b in lp.loop.blocks]
    pats = {k: int(v) for k, v in lp.loop.patterns.items()}
    return LoopReport(lp.name, lp.loop.lists, next(iter(pats.values())), pats,
                      names[lp.fn.start:lp.fn.stop], names[lp.middle.start:lp.middle.stop],
                      names[lp.bn.start:lp.bn.stop], lp.loop.streams, reason)


def explain(module: torch.nn.Module, *args: Any, cache_config: Optional[DBCacheConfig] = None,
            **kwargs: Any) -> ExplainReport:
    """Trace ``module(*args, **kwargs)`` once and report the loops found, the pattern of
    each, the Fn / middle / Bn split, or why nothing matched. Runs the model eagerly once."""
    nested_notes = []
    if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):  # torch.compile(m): explain m
        nested_notes.append(f"explained the module inside torch.compile (._orig_mod). {NESTED_FIX}")
        module = module._orig_mod
    existing = getattr(module, _ATTR, None)
    config = cache_config or (existing.config if existing else DBCacheConfig())
    session = Session(config, backend="eager", list_lengths=_list_lengths(module),
                      params_modifiers=existing.params_modifiers if existing else None)
    prior = existing.previous_forward if existing is not None else module.__dict__.get("forward")

    def graph_reports(flags: bool) -> list[GraphReport]:
        reports: list[GraphReport] = []

        def backend(gm, ex):
            try:
                reports.append(analyse(gm, ex, session)[2])
            except StageError as err:
                reports.append(GraphReport(len(gm.graph.nodes), [], [f"{err}: the model would run uncached"], [], []))
            return gm.forward

        patch = torch._dynamo.config.patch(**CAPTURE_FLAGS) if flags else contextlib.nullcontext()
        with torch.no_grad(), patch:
            torch.compile(_isolated_forward(module, prior), backend=backend, dynamic=False)(*args, **kwargs)
        return reports

    # the same order of paths as a compiled module takes (paths.ModulePaths)
    reports, path, tried = graph_reports(False), "graph", []
    graphs = len(reports)
    if graph_broken(reports):
        retry = graph_reports(True)
        tried.append(f"graph path: {len(reports)} graphs, no loop whole in one; retried with dynamo's "
                     "capture_scalar_outputs / capture_dynamic_output_shape_ops")
        if any(r.loops for r in retry):
            reports, path, graphs = retry, "graph (scalar/dynamic-output capture)", len(retry)
    if block_path_may_help(module, reports):
        with torch.no_grad():
            _, calls = trace_block_calls(module, lambda: _isolated_forward(module, prior)(*args, **kwargs))
        block = block_path_report(module, session, calls)
        tried.append("graph path cached nothing; traced one eager call at the block-list level")
        if block.loops:
            reports, path = [block], "block"
        else:
            reports = reports + [block]
    rep = ExplainReport(loops=[], graphs=len(reports), path=path if any(r.loops for r in reports) else "-",
                        notes=nested_notes + tried)
    for r in reports:
        rep.reasons += r.reasons
        rep.notes += r.notes
        rep.skipped += r.skipped
        rep.loops += [_loop_report(lp) for lp in r.loops]
        for s in r.skipped:  # found, but the config leaves it no middle: still listed, with the fix
            if isinstance(s, SkippedLoop) and all(lp.name != s.plan.name for lp in rep.found):
                rep.uncached_loops.append(_loop_report(s.plan, str(s)))
    if rep.found:
        rep.reasons = [r for r in rep.reasons if r != NO_BLOCK_LIST]
    else:
        rep.reasons += _graph_breaks(module, prior, args, kwargs)
    rep.reasons = list(dict.fromkeys(rep.reasons))
    rep.skipped = list(dict.fromkeys(rep.skipped))
    rep.notes = list(dict.fromkeys(rep.notes))
    if graphs > 1 and path != "block":
        rep.notes.append(f"{graphs} graphs: dynamo broke the forward into pieces "
                         "(torch._dynamo.explain lists why); only loops whole inside one graph are cached")
    return rep


def zoo_entry(name: str) -> Any:
    """The zoo entry for a diffusers class name or an entry name (case-insensitive); an unknown
    name raises ``KeyError`` naming the close matches."""
    import difflib

    from .testing.zoo import ZOO

    by_name: dict[str, Any] = {}
    for key, e in sorted(ZOO.items()):  # the first (hand-tuned) entry of a class wins
        by_name.setdefault(key.lower(), e)
        if e.cls_name:
            by_name.setdefault(e.cls_name.lower(), e)
    e = by_name.get(name.lower())
    if e is not None:
        return e
    names = sorted({e.cls_name for e in ZOO.values() if e.cls_name} | set(ZOO))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5) or difflib.get_close_matches(
        name.lower(), [n.lower() for n in names], n=5, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    classes = len({e.cls_name for e in ZOO.values() if e.cls_name})
    raise KeyError(f"no tiny model for {name!r}: not one of the {classes} diffusers transformer classes "
                   f"(or zoo entries) of dit_cachepass.testing.zoo{hint}")


def cli(args: Any) -> int:
    """``python -m dit_cachepass explain --model <class> --tiny [--fn N --bn N --threshold X]``."""
    import sys

    if not args.tiny:
        print("error: only --tiny is supported (offline: a tiny random instance, no weights are downloaded); "
              f"run: python -m dit_cachepass explain --model {args.model} --tiny", file=sys.stderr)
        return 2
    try:
        entry = zoo_entry(args.model)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("Fn_compute_blocks", args.fn), ("Bn_compute_blocks", args.bn),
                                   ("residual_diff_threshold", args.threshold)) if v is not None}
    config = DBCacheConfig(**overrides)
    print(f"{entry.cls_name or entry.name} (zoo entry {entry.name!r}, tiny random weights), "
          f"Fn_compute_blocks={config.Fn_compute_blocks}, Bn_compute_blocks={config.Bn_compute_blocks}, "
          f"residual_diff_threshold={config.residual_diff_threshold}")
    print(explain(entry.build(), **entry.inputs(0, 6, 1.0), return_dict=False, cache_config=config))
    return 0
