"""Match: attributed graph -> the block loops worth caching, their streams and patterns.

A *main list* is a ModuleList whose children are called one after another from the root
forward, each consuming what the previous one produced. A *stream* (thread) is a value
that flows from block to block: we follow it by data flow across block boundaries and by
structure inside a run of identical blocks (the same op at the same local position), so
two streams of equal shape are never confused. The hidden stream is the one that reaches
the model output (ties: the one the block touches first).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.fx as fx

from .capture import BlockRef, CapturedGraph
from .patterns import FlowShape, ForwardPattern, classify

NO_BLOCK_LIST = "no ModuleList whose children are called in sequence was found in the graph"
Slot = tuple[int, int]  # (local index of first consumer in the block, input position)
MIN_LIST_SHARE = 0.2  # a list with < 20 % of the largest list's ops is auxiliary


@dataclass
class Block:
    ref: BlockRef
    nodes: list[fx.Node]
    signature: tuple

    @property
    def first(self) -> fx.Node:
        return self.nodes[0]

    @property
    def last(self) -> fx.Node:
        return self.nodes[-1]


@dataclass
class Thread:
    """One stream through a loop: its input and output value at every block."""

    inputs: list[Optional[fx.Node]]
    outputs: list[Optional[fx.Node]]


@dataclass
class BlockLoop:
    """A chain of blocks cached as one unit (one Fn, one middle, one Bn, one decision)."""

    lists: list[str]
    blocks: list[Block]
    threads: list[Thread]
    hidden: int
    patterns: dict[str, ForwardPattern]

    @property
    def name(self) -> str:
        return "+".join(self.lists)

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass
class MatchResult:
    loops: list[BlockLoop]
    reasons: list[str] = field(default_factory=list)  # why something was not matched
    notes: list[str] = field(default_factory=list)  # decisions worth showing in explain()


def _signature(nodes: list[fx.Node]) -> tuple:
    return tuple((n.op, str(n.target)) for n in nodes)


def _external_inputs(block: Block, cap: CapturedGraph) -> dict[Slot, fx.Node]:
    inside = set(block.nodes)
    slots: dict[Slot, fx.Node] = {}
    seen: set[fx.Node] = set()
    for q, node in enumerate(block.nodes):
        for k, arg in enumerate(node.all_input_nodes):
            if arg in inside or arg in cap.params or arg in seen:
                continue
            seen.add(arg)
            slots[(q, k)] = arg
    return slots


class _Origins:
    """Which nodes of a given block a value derives from, looking through glue only."""

    def __init__(self, cap: CapturedGraph, loop_nodes: set[fx.Node]):
        self.cap, self.loop_nodes = cap, loop_nodes

    def of(self, value: fx.Node, block: Block, limit: int = 64) -> set[fx.Node]:
        inside = set(block.nodes)
        start = self.cap.order[block.first]

        def through_glue(v: fx.Node) -> bool:
            return (v not in inside and v not in self.loop_nodes and v.op != "placeholder"
                    and self.cap.order[v] > start)

        return {v for v in _walk_back(value, through_glue, limit) if v in inside}


def _walk_back(value: fx.Node, follow: Callable[[fx.Node], bool], limit: int) -> Iterator[fx.Node]:
    """Visit ``value`` and its producers, expanding only nodes for which ``follow`` holds."""
    stack, seen = [value], set()
    while stack and len(seen) < limit:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        yield v
        if follow(v):
            stack.extend(v.all_input_nodes)


def _blocks_by_list(cap: CapturedGraph) -> dict[str, dict[int, list[fx.Node]]]:
    groups: dict[str, dict[int, list[fx.Node]]] = defaultdict(lambda: defaultdict(list))
    for node, ref in cap.block_of.items():
        groups[ref.list_path][ref.index].append(node)
    for per_idx in groups.values():
        for nodes in per_idx.values():
            nodes.sort(key=lambda n: cap.order[n])
    return groups


def _candidate_lists(cap: CapturedGraph, result: MatchResult,
                     list_lengths: Optional[dict[str, int]]) -> list[list[Block]]:
    cands: list[list[Block]] = []
    for path, per_idx in _blocks_by_list(cap).items():
        idxs = sorted(per_idx)
        blocks = [Block(BlockRef(path, i), per_idx[i], _signature(per_idx[i])) for i in idxs]
        expected = (list_lengths or {}).get(path)
        if len(blocks) < 2:
            continue
        if idxs != list(range(len(idxs))) or (expected is not None and len(idxs) != expected):
            result.reasons.append(
                f"{path}: only blocks {idxs} appear in this graph (list has {expected or '?'}); "
                "a graph break inside the loop or blocks called out of order")
            continue
        if any(cap.order[a.last] > cap.order[b.first] for a, b in zip(blocks, blocks[1:])):
            result.reasons.append(f"{path}: blocks are not called one after another (interleaved calls)")
            continue
        cands.append(blocks)
    return cands


def _select_main(cands: list[list[Block]], cap: CapturedGraph, result: MatchResult) -> list[list[Block]]:
    if not cands:
        return []
    size = {id(c): sum(len(b.nodes) for b in c) for c in cands}
    largest = max(size.values())
    span = {id(c): (cap.order[c[0].first], cap.order[c[-1].last]) for c in cands}
    main = []
    for c in sorted(cands, key=lambda c: -size[id(c)]):
        path = c[0].ref.list_path
        if not cap.top_level.get(path, False):
            if cap.block_class[path].__name__.endswith(("Block", "Layer")):  # refiners, not ff.net
                result.notes.append(f"{path}: nested inside another module; treated as glue, not cached")
        elif size[id(c)] < MIN_LIST_SHARE * largest:
            result.notes.append(f"{path}: small auxiliary list ({size[id(c)]} ops vs {largest}); not cached")
        elif any(span[id(m)][0] < span[id(c)][1] and span[id(c)][0] < span[id(m)][1] for m in main):
            result.notes.append(f"{path}: called between the blocks of a larger list; part of its middle")
        else:
            main.append(c)
    return sorted(main, key=lambda c: span[id(c)][0])


def _runs(blocks: list[Block]) -> list[tuple[int, int]]:
    """Maximal [start, end) ranges of structurally identical consecutive blocks."""
    runs, start = [], 0
    for i in range(1, len(blocks) + 1):
        if i == len(blocks) or blocks[i].signature != blocks[start].signature:
            runs.append((start, i))
            start = i
    return runs


def _trace_threads(blocks: list[Block], cap: CapturedGraph, result: MatchResult, name: str
                   ) -> Optional[list[Thread]]:
    loop_nodes = {n for b in blocks for n in b.nodes}
    origins = _Origins(cap, loop_nodes)
    ext = [_external_inputs(b, cap) for b in blocks]
    pos = [{n: q for q, n in enumerate(b.nodes)} for b in blocks]
    run_of = {}
    run_map: dict[int, dict[Slot, int]] = {}  # run start -> slot -> output local index
    for start, end in _runs(blocks):
        for i in range(start, end):
            run_of[i] = start
        if end - start >= 2:
            mapping = {}
            for slot, v in ext[start + 1].items():
                src = origins.of(v, blocks[start])
                if len(src) == 1:
                    mapping[slot] = pos[start][next(iter(src))]
            run_map[start] = mapping
    if 0 not in run_map or not run_map[0]:
        result.reasons.append(f"{name}: no value flows from block 0 to block 1 (not a chain)")
        return None
    threads = []
    for slot0 in sorted(run_map[0]):
        t = Thread(inputs=[None] * len(blocks), outputs=[None] * len(blocks))
        slot: Optional[Slot] = slot0
        for i, b in enumerate(blocks):
            if slot is None:
                break
            t.inputs[i] = ext[i].get(slot)
            out_q = run_map.get(run_of[i], {}).get(slot)
            if out_q is not None:
                t.outputs[i] = b.nodes[out_q]
            if i + 1 == len(blocks):
                break
            if run_of[i + 1] == run_of[i]:
                continue
            # structure changes: follow the data into the next block
            src = t.outputs[i]
            nxt = [s for s, v in ext[i + 1].items() if src is not None and origins.of(v, b) == {src}]
            if len(nxt) != 1:
                result.notes.append(f"{name}: stream {len(threads)} ends at block {b.ref}")
                slot = None
            else:
                slot = nxt[0]
        threads.append(t)
    _fill_last_outputs(blocks, threads, cap)
    return threads


def _fill_last_outputs(blocks: list[Block], threads: list[Thread], cap: CapturedGraph) -> None:
    """The last block may be structurally unique (SD3 returns (None, h)): match its used
    outputs to the streams still open by shape and dtype, only when unambiguous."""
    last = blocks[-1]
    open_threads = [t for t in threads if t.inputs[-1] is not None and t.outputs[-1] is None]
    if not open_threads:
        return
    inside = set(last.nodes)
    used = [n for n in last.nodes if any(u not in inside for u in n.users)]

    def key(n: fx.Node):
        v = n.meta.get("example_value")
        return (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else None

    for t in open_threads:
        k = key(t.inputs[-1])
        hits = [n for n in used if key(n) == k]
        others = [u for u in open_threads if u is not t and key(u.inputs[-1]) == k]
        if len(hits) == 1 and not others:
            t.outputs[-1] = hits[0]


def _reaches_output(node: fx.Node) -> bool:
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n.op == "output":
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(n.users)
    return False


def _hidden_thread(threads: list[Thread]) -> int:
    live = [i for i, t in enumerate(threads) if t.outputs[-1] is not None and _reaches_output(t.outputs[-1])]
    return live[0] if len(live) == 1 else 0


def _pattern(blocks: list[Block], threads: list[Thread], cap: CapturedGraph) -> ForwardPattern:
    first = blocks[0]
    inside = set(first.nodes)
    carried = {t.outputs[0] for t in threads if t.outputs[0] is not None}
    used_out = [n for n in first.nodes if any(u not in inside for u in n.users)]
    side = any(n not in carried and isinstance(n.meta.get("example_value"), torch.Tensor)
               and n.meta["example_value"].dim() >= 2 for n in used_out) and len(threads) == 1
    streams = {t.inputs[0] for t in threads}
    shared = [v for v in _external_inputs(first, cap).values() if v not in streams]
    encoder = any(_derives_from_encoder_input(v) for v in shared)
    return classify(FlowShape(len(threads), side, encoder), cap.block_class[first.ref.list_path])


def _derives_from_encoder_input(value: fx.Node, limit: int = 4000) -> bool:
    """Does a value come from the model's encoder / context input (not via the streams)?"""
    return any(v.op == "placeholder" and "_parameters_" not in v.name
               and ("encoder_hidden_states" in v.name.lower() or "context" in v.name.lower())
               for v in _walk_back(value, lambda v: True, limit))


def _can_chain(a: BlockLoop, b: BlockLoop, cap: CapturedGraph) -> bool:
    """Two lists chain when every stream leaving ``a`` enters ``b`` unchanged."""
    outs = [t.outputs[-1] for t in a.threads if t.outputs[-1] is not None]
    ins = [t.inputs[0] for t in b.threads]
    return bool(outs) and len(outs) == len(ins) and set(outs) == set(ins)


def _merge(a: BlockLoop, b: BlockLoop) -> BlockLoop:
    by_input = {t.inputs[0]: t for t in b.threads}
    threads = []
    for t in a.threads:
        u = by_input[t.outputs[-1]]
        threads.append(Thread(t.inputs + u.inputs, t.outputs + u.outputs))
    return BlockLoop(a.lists + b.lists, a.blocks + b.blocks, threads, _hidden_thread(threads),
                     {**a.patterns, **b.patterns})


def match(cap: CapturedGraph, layout: str = "auto",
          list_lengths: Optional[dict[str, int]] = None) -> MatchResult:
    """Find the cached loops of a captured graph.

    ``layout``: "per_list" caches each main list on its own; "chain" joins consecutive main
    lists into one loop; "auto" chains lists whose streams pass from one to the next
    unchanged (FLUX.1's double -> single blocks, as cache-dit does) and keeps the rest apart.
    """
    result = MatchResult(loops=[])
    if cap.region_error is not None:
        result.reasons.append(f"autocast / grad-mode / vmap regions in the graph cannot be re-entered per cached "
                              f"piece ({cap.region_error}), so the model runs uncached")
        return result
    loops: list[BlockLoop] = []
    for blocks in _select_main(_candidate_lists(cap, result, list_lengths), cap, result):
        path = blocks[0].ref.list_path
        threads = _trace_threads(blocks, cap, result, path)
        if threads is None:
            continue
        hidden = _hidden_thread(threads)
        loops.append(BlockLoop([path], blocks, threads, hidden, {path: _pattern(blocks, threads, cap)}))
    if layout != "per_list" and len(loops) > 1:
        merged = [loops[0]]
        for nxt in loops[1:]:
            if _can_chain(merged[-1], nxt, cap):
                merged[-1] = _merge(merged[-1], nxt)
                result.notes.append(f"chained {merged[-1].name}: streams pass straight from list to list")
            elif layout == "chain":
                result.notes.append(f"cannot chain {merged[-1].name} -> {nxt.name}: glue changes the streams")
                merged.append(nxt)
            else:
                merged.append(nxt)
        loops = merged
    result.loops = loops
    if not loops and not result.reasons:
        result.reasons.append(NO_BLOCK_LIST)
    return result
