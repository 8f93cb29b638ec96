"""Streams: the values that flow from block to block through a loop, followed by data flow.

A stream (thread) is followed across block boundaries by data flow and, inside a run of
identical blocks, by structure (the same op at the same local position), so two streams of
equal shape are never confused. The hidden stream is the one that reaches the model output
(ties: the one the block touches first). ``matcher`` decides which lists are loops; this
module says what flows through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols, statically_known_true

from .capture import BlockRef, CapturedGraph

Slot = tuple[int, int]  # (local index of first consumer in the block, input position)


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


def signature(nodes: list[fx.Node]) -> tuple:
    return tuple((n.op, str(n.target)) for n in nodes)


def external_inputs(block: Block, cap: CapturedGraph) -> dict[Slot, fx.Node]:
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


class Origins:
    """Which nodes of a given block a value derives from, looking through glue only."""

    def __init__(self, cap: CapturedGraph, loop_nodes: set[fx.Node]):
        self.cap, self.loop_nodes = cap, loop_nodes

    def of(self, value: fx.Node, block: Block, limit: int = 64) -> set[fx.Node]:
        inside = set(block.nodes)
        start = self.cap.order[block.first]

        def through_glue(v: fx.Node) -> bool:
            return (v not in inside and v not in self.loop_nodes and v.op != "placeholder"
                    and self.cap.order[v] > start)

        return {v for v in walk_back(value, through_glue, limit) if v in inside}


def walk_back(value: fx.Node, follow: Callable[[fx.Node], bool], limit: int) -> Iterator[fx.Node]:
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


def _edges(nxt_inputs: dict[Slot, fx.Node], block: Block, origins: Origins) -> dict[Slot, fx.Node]:
    """Input slots of the next block that derive (directly or through glue) from exactly one
    node of ``block``: the values flowing from one block to the next."""
    edges = {}
    for slot, v in nxt_inputs.items():
        if layout(v) is None:
            continue  # sizes and scalars (SymInts of a dynamic capture) are not streams
        src = origins.of(v, block)
        if len(src) == 1 and layout(next(iter(src))) is not None:
            edges[slot] = next(iter(src))
    return edges


def layout(n: fx.Node) -> Optional[tuple]:
    v = n.meta.get("example_value")
    return (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else None


def same_layout(a: Optional[tuple], b: Optional[tuple]) -> bool:
    """Equal shapes and dtypes, decided without guards: a symbolic size equals another only where
    that is provable, so comparing a data-dependent size (``u1``, from ``.item()`` under
    capture_scalar_outputs) with a number never asks dynamo to guard on its value
    (GuardOnDataDependentSymNode, as on HunyuanVideoFramepack with a padded prompt)."""
    return a is not None and b is not None and a[1] == b[1] and same_shape(a[0], b[0])


def same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(_same_size(x, y) for x, y in zip(a, b))


def _same_size(x: Any, y: Any) -> bool:
    """Ints compare as ints; a size with a data-dependent (unbacked) symbol, whose value no one
    knows at compile time (a slice ``[:, :-n]`` of a length read with ``.item()``), equals any
    size it is not provably different from: a block's stream keeps its length even where the
    symbols cannot show it. Other symbolic sizes must be provably equal."""
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    if free_unbacked_symbols(x) or free_unbacked_symbols(y):
        return not statically_known_true(x != y)
    return statically_known_true(x == y)


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
            if v is not None and v in d and same_layout(layout(v), layout(out)):
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
             if v in d and v not in exclude and same_layout(layout(v), layout(out))]
    return list(ext.values())[min(cands)[1]] if cands else None


def trace_threads(blocks: list[Block], cap: CapturedGraph, result: Any, name: str) -> Optional[list[Thread]]:
    """Follow every stream from block to block by data flow. Where two neighbouring blocks
    are structurally identical, "the same stream" is the same input slot and output position
    (a shortcut that also keeps equal-shaped streams apart); elsewhere (heterogeneous lists,
    FLUX double -> single, a last block whose dead outputs were removed) a block's output
    continues the stream whose input it is closest to. ``result`` (a ``MatchResult``) gets
    the notes and rejections found on the way."""
    n = len(blocks)
    loop_nodes = {x for b in blocks for x in b.nodes}
    origins = Origins(cap, loop_nodes)
    ext = [external_inputs(b, cap) for b in blocks]
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


def hidden_thread(threads: list[Thread]) -> int:
    live = [i for i, t in enumerate(threads) if t.outputs[-1] is not None and _reaches_output(t.outputs[-1])]
    return live[0] if len(live) == 1 else 0


def reshaped(blocks: list[Block], thread: Thread) -> str:
    """Where the hidden stream leaves a block with another shape than it came in with, if so."""
    for b, i, o in zip(blocks, thread.inputs, thread.outputs):
        a, z = (layout(i) if i is not None else None), (layout(o) if o is not None else None)
        if a is not None and z is not None and not same_shape(a[0], z[0]):
            return f"block {b.ref} turns its stream of shape {list(a[0])} into {list(z[0])}"
    first, last = thread.outputs[0], thread.inputs[-1]
    if thread.inputs[0] is None and thread.outputs[-1] is None and first is not None and last is not None:
        # no input of block 0 has the shape of the stream it passes on, nor any output of the last
        # block the shape of the stream it receives: each block changes the stream's shape
        return (f"block {blocks[0].ref} passes on a stream of shape {list(layout(first)[0])} that none of its "
                f"inputs has, and block {blocks[-1].ref} returns none of the shape it receives "
                f"({list(layout(last)[0])})")
    return ""
