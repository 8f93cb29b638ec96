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

# What a transformer block list is, here: an nn.ModuleList of >= 2 blocks (modules of their
# own, not plain torch.nn layers such as Linear or Sequential) called one after another, each
# block passing a stream to the next that keeps its shape (a residual stream). An MLP's layers
# or a UNet's down/up stages (which change resolution and channels) are not.
NO_BLOCK_LIST = ("no transformer block list: no ModuleList of 2 or more blocks (modules of their own, not "
                 "plain torch.nn layers) whose children are called in sequence, each passing a same-shaped "
                 "stream to the next")
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

    @property
    def streams(self) -> int:
        return len(self.threads)

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass
class MatchResult:
    loops: list[BlockLoop]
    reasons: list[str] = field(default_factory=list)  # why something was not matched
    notes: list[str] = field(default_factory=list)  # decisions worth showing in explain()
    # lists that are not transformer block lists, and why (reasons only when nothing is matched)
    rejected: list[str] = field(default_factory=list)


def torch_layer_class(cls: type) -> bool:
    """A plain torch.nn layer or container (Linear, Conv2d, Sequential...): an MLP's layers, not
    transformer blocks (those are modules of their own: a diffusers or user block class)."""
    return cls.__module__.startswith("torch.nn.")


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
        cls = cap.block_class.get(path)
        if cls is not None and torch_layer_class(cls):
            if cap.top_level.get(path, False):  # nested ones (a block's ff.net) are the blocks' insides
                result.rejected.append(f"{path}: its blocks are torch.nn.{cls.__name__} layers, not transformer blocks")
            continue
        if len(blocks) < 2 and (idxs != [0] or expected not in (None, 1)):
            continue  # a one-block list is a candidate only as a link of a chain (FLUX 1 double + 1 single)
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

    def chained(c: list[Block]) -> bool:  # a short list chained to another one is part of the main loop
        return any(_direct(m, c, cap) if span[id(m)][1] < span[id(c)][0] else _direct(c, m, cap)
                   for m in cands if m is not c and cap.top_level.get(m[0].ref.list_path, False))

    for c in sorted(cands, key=lambda c: -size[id(c)]):
        path = c[0].ref.list_path
        if not cap.top_level.get(path, False):
            if cap.block_class[path].__name__.endswith(("Block", "Layer")):  # refiners, not ff.net
                result.notes.append(f"{path}: nested inside another module; treated as glue, not cached")
        elif size[id(c)] < MIN_LIST_SHARE * largest and not chained(c):
            result.notes.append(f"{path}: small auxiliary list ({size[id(c)]} ops vs {largest}); not cached")
        elif any(span[id(m)][0] < span[id(c)][1] and span[id(c)][0] < span[id(m)][1] for m in main):
            result.notes.append(f"{path}: called between the blocks of a larger list; part of its middle")
        else:
            main.append(c)
    return sorted(main, key=lambda c: span[id(c)][0])


def _edges(nxt_inputs: dict[Slot, fx.Node], block: Block, origins: _Origins) -> dict[Slot, fx.Node]:
    """Input slots of the next block that derive (directly or through glue) from exactly one
    node of ``block``: the values flowing from one block to the next."""
    edges = {}
    for slot, v in nxt_inputs.items():
        if _layout(v) is None:
            continue  # sizes and scalars (SymInts of a dynamic capture) are not streams
        src = origins.of(v, block)
        if len(src) == 1 and _layout(next(iter(src))) is not None:
            edges[slot] = next(iter(src))
    return edges


def _layout(n: fx.Node) -> Optional[tuple]:
    v = n.meta.get("example_value")
    return (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else None


def _distances(out: fx.Node, block: Block, cap: CapturedGraph) -> dict[fx.Node, int]:
    """Op count from each external input of ``block`` to ``out`` (shortest, backwards)."""
    inside = set(block.nodes)
    dist, frontier = {out: 0}, [out]
    found: dict[fx.Node, int] = {}
    while frontier:
        nxt = []
        for v in frontier:
            for a in v.all_input_nodes:
                if a in dist or a in cap.params:
                    continue
                dist[a] = dist[v] + 1
                if a in inside:
                    nxt.append(a)
                else:
                    found[a] = dist[a]
        frontier = nxt
    return found


def _pair_outputs(block: Block, inputs: list[Optional[fx.Node]], candidates: list[fx.Node],
                  cap: CapturedGraph) -> list[Optional[fx.Node]]:
    """Which candidate output continues each stream entering ``block``: the one of the same
    shape and dtype closest (fewest ops) to the stream's input, as a residual connection is.
    Two streams of equal shape are told apart by that distance, never by name."""
    pairs = []
    for out in candidates:
        d = _distances(out, block, cap)
        for k, v in enumerate(inputs):
            if v is not None and v in d and _layout(v) is not None and _layout(v) == _layout(out):
                pairs.append((d[v], k, out))
    result: list[Optional[fx.Node]] = [None] * len(inputs)
    taken = set()
    for _, k, out in sorted(pairs, key=lambda p: (p[0], p[1])):
        if result[k] is None and out not in taken:
            result[k] = out
            taken.add(out)
    return result


def _nearest_input(block: Block, out: fx.Node, ext: dict[Slot, fx.Node], cap: CapturedGraph,
                   exclude: set[fx.Node]) -> Optional[fx.Node]:
    d = _distances(out, block, cap)
    cands = [(d[v], k) for k, v in enumerate(ext.values())
             if v in d and v not in exclude and _layout(v) is not None and _layout(v) == _layout(out)]
    return list(ext.values())[min(cands)[1]] if cands else None


def _trace_threads(blocks: list[Block], cap: CapturedGraph, result: MatchResult, name: str
                   ) -> Optional[list[Thread]]:
    """Follow every stream from block to block by data flow. Where two neighbouring blocks
    are structurally identical, "the same stream" is the same input slot and output position
    (a shortcut that also keeps equal-shaped streams apart); elsewhere (heterogeneous lists,
    FLUX double -> single, a last block whose dead outputs were removed) a block's output
    continues the stream whose input it is closest to."""
    n = len(blocks)
    loop_nodes = {x for b in blocks for x in b.nodes}
    origins = _Origins(cap, loop_nodes)
    ext = [_external_inputs(b, cap) for b in blocks]
    pos = [{x: q for q, x in enumerate(b.nodes)} for b in blocks]
    edges = [_edges(ext[i + 1], blocks[i], origins) for i in range(n - 1)]
    if n < 2 or not edges[0]:
        result.rejected.append(f"{name}: no value flows from block 0 to block 1 (not a chain)")
        return None

    def same(i: int, j: int) -> bool:
        return 0 <= i < n and 0 <= j < n and blocks[i].signature == blocks[j].signature

    def next_slot(i: int, out: fx.Node, prev_slot: Optional[Slot]) -> Optional[Slot]:
        """The input slot of block i+1 that ``out`` (of block i) flows into."""
        slots = [s for s, src in edges[i].items() if src is out]
        direct = [s for s in slots if ext[i + 1][s] is out]
        if len(slots) == 1 or len(direct) == 1:
            return slots[0] if len(slots) == 1 else direct[0]
        if prev_slot in slots and same(i, i + 1):
            return prev_slot
        return None

    threads: list[Thread] = []
    slots_now: list[Optional[Slot]] = []
    for slot, out in sorted(edges[0].items()):
        if any(t.outputs[0] is out for t in threads):
            continue  # the same stream also feeds another slot (a norm of it, say)
        t = Thread(inputs=[None] * n, outputs=[None] * n)
        t.outputs[0] = out
        threads.append(t)
        slots_now.append(next_slot(0, out, None))
    # block 0's input of each stream
    taken: set[fx.Node] = set()
    for t, slot in zip(threads, slots_now):
        if same(0, 1) and slot is not None:
            t.inputs[0] = ext[0].get(slot)
        else:
            t.inputs[0] = _nearest_input(blocks[0], t.outputs[0], ext[0], cap, taken)
        if t.inputs[0] is not None:
            taken.add(t.inputs[0])
    for i in range(1, n):
        for k, t in enumerate(threads):
            slot = slots_now[k]
            t.inputs[i] = ext[i].get(slot) if slot is not None and t.outputs[i - 1] is not None else None
        if i < n - 1:
            candidates = list(dict.fromkeys(edges[i].values()))
        else:
            inside = set(blocks[i].nodes)
            candidates = [x for x in blocks[i].nodes if any(u not in inside for u in x.users)]
        outs: list[Optional[fx.Node]] = [None] * len(threads)
        if same(i - 1, i):  # structural shortcut: the same position as in the previous block
            for k, t in enumerate(threads):
                prev = t.outputs[i - 1]
                if prev is not None and t.inputs[i] is not None:
                    cand = blocks[i].nodes[pos[i - 1][prev]]
                    outs[k] = cand if cand in candidates else None
        rest = [k for k in range(len(threads)) if outs[k] is None]
        if rest:
            free = [c for c in candidates if c not in outs]
            paired = _pair_outputs(blocks[i], [threads[k].inputs[i] for k in rest], free, cap)
            for k, out in zip(rest, paired):
                outs[k] = out
        for k, t in enumerate(threads):
            t.outputs[i] = outs[k]
            if outs[k] is None and t.inputs[i] is not None and i < n - 1:
                result.notes.append(f"{name}: stream {k} ends at block {blocks[i].ref}")
            if i < n - 1:
                slots_now[k] = next_slot(i, outs[k], slots_now[k]) if outs[k] is not None else None
    return threads


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


def _direct(a: list[Block], b: list[Block], cap: CapturedGraph) -> bool:
    """Lists chain when the values the next list's first block takes from the previous list's
    last block come straight out of it, with no glue in between (FLUX.1's double -> single)."""
    last, first = a[-1], b[0]
    origins = _Origins(cap, {x for blk in (last, first) for x in blk.nodes})
    inside = set(last.nodes)
    links = [v for v in _external_inputs(first, cap).values() if origins.of(v, last)]
    return bool(links) and all(v in inside for v in links)


def _split_bad_chains(groups: list[list[list[Block]]], cap: CapturedGraph) -> list[list[list[Block]]]:
    """A chain must carry every stream of each list through all of its blocks: a list whose
    own streams start in glue (Kandinsky's visual blocks after a text block that only feeds
    them a context) is a loop of its own, not a continuation."""
    out = []
    for group in groups:
        if len(group) > 1 and not _chain_holds(group, cap):
            out += [[g] for g in group]
        else:
            out.append(group)
    return out


def _chain_holds(group: list[list[Block]], cap: CapturedGraph) -> bool:
    scratch = MatchResult(loops=[])
    seq = [b for g in group for b in g]
    threads = _trace_threads(seq, cap, scratch, "chain")
    if threads is None:
        return False
    k = 0
    for g in group[:-1]:
        k += len(g)
        for t in threads:
            if (t.outputs[k - 1] is None) != (t.inputs[k] is None) or (
                    t.inputs[k] is not None and t.inputs[k] is not t.outputs[k - 1]):
                return False
    if any(v is None for t in threads for v in t.inputs) or threads[_hidden_thread(threads)].outputs[-1] is None:
        return False  # a stream stops inside the chain (the last block may drop a dead output)
    for g in group:  # each list's own streams (when it has some) all come through the chain
        if len(g) >= 2:
            own = _trace_threads(g, cap, scratch, "list")
            if own is not None and len(own) > len(threads):
                return False
    return True


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
    groups: list[list[list[Block]]] = []
    for blocks in _select_main(_candidate_lists(cap, result, list_lengths), cap, result):
        if groups and layout != "per_list" and _direct(groups[-1][-1], blocks, cap):
            groups[-1].append(blocks)
        else:
            if groups and layout == "chain":
                result.notes.append(f"cannot chain {groups[-1][-1][0].ref.list_path} -> {blocks[0].ref.list_path}: "
                                    "glue changes the streams")
            groups.append([blocks])
    loops: list[BlockLoop] = []
    for group in _split_bad_chains(groups, cap):
        lists = [g[0].ref.list_path for g in group]
        seq = [b for g in group for b in g]
        if len(seq) < 2:
            result.notes.append(f"{lists[0]}: a single block with no list to chain to; nothing to cache")
            continue
        threads = _trace_threads(seq, cap, result, "+".join(lists))
        if threads is None:
            continue
        reshaped = _reshaped(seq, threads[_hidden_thread(threads)])
        if reshaped:
            result.rejected.append(f"{'+'.join(lists)}: {reshaped}: stages that change the stream's shape "
                                   "(a UNet's down/up blocks), not transformer blocks over a residual stream")
            continue
        patterns, start = {}, 0
        for g in group:
            part = [Thread(t.inputs[start:start + len(g)], t.outputs[start:start + len(g)]) for t in threads]
            patterns[g[0].ref.list_path] = _pattern(g, [t for t in part if t.inputs[0] is not None], cap)
            start += len(g)
        loops.append(BlockLoop(lists, seq, threads, _hidden_thread(threads), patterns))
        if len(lists) > 1:
            result.notes.append(f"chained {'+'.join(lists)}: streams pass straight from list to list")
    result.loops = loops
    if loops:
        result.notes += result.rejected
    else:
        if not result.reasons:
            result.reasons.append(NO_BLOCK_LIST)
        result.reasons += result.rejected
    return result


def _reshaped(blocks: list[Block], thread: Thread) -> str:
    """Where the hidden stream leaves a block with another shape than it came in with, if so."""
    for b, i, o in zip(blocks, thread.inputs, thread.outputs):
        a, z = (_layout(i) if i is not None else None), (_layout(o) if o is not None else None)
        if a is not None and z is not None and a[0] != z[0]:
            return f"block {b.ref} turns its stream of shape {list(a[0])} into {list(z[0])}"
    first, last = thread.outputs[0], thread.inputs[-1]
    if thread.inputs[0] is None and thread.outputs[-1] is None and first is not None and last is not None:
        # no input of block 0 has the shape of the stream it passes on, nor any output of the last
        # block the shape of the stream it receives: each block changes the stream's shape
        return (f"block {blocks[0].ref} passes on a stream of shape {list(_layout(first)[0])} that none of its "
                f"inputs has, and block {blocks[-1].ref} returns none of the shape it receives "
                f"({list(_layout(last)[0])})")
    return ""
