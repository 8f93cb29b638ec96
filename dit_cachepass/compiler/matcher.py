"""Match: attributed graph -> the block loops worth caching, their streams and patterns.

A *main list* is a ModuleList whose children are called one after another from the root
forward, each consuming what the previous one produced. Consecutive main lists whose
streams pass straight from one to the next are chained into one loop; each list gets its
Forward Pattern. Following the streams themselves is ``streams``' part.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.fx as fx

from .capture import BlockRef, CapturedGraph
from .patterns import FlowShape, ForwardPattern, classify
from .streams import (Block, Origins, Thread, external_inputs, hidden_thread, reshaped, signature,
                      trace_threads, walk_back)

# What a transformer block list is, here: an nn.ModuleList of >= 2 blocks (modules of their
# own, not plain torch.nn layers such as Linear or Sequential) called one after another, each
# block passing a stream to the next that keeps its shape (a residual stream). An MLP's layers
# or a UNet's down/up stages (which change resolution and channels) are not.
NO_BLOCK_LIST = ("no transformer block list: no ModuleList of 2 or more blocks (modules of their own, not "
                 "plain torch.nn layers) whose children are called in sequence, each passing a same-shaped "
                 "stream to the next")
MIN_LIST_SHARE = 0.2  # a list with < 20 % of the largest list's ops is auxiliary


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
        blocks = [Block(BlockRef(path, i), per_idx[i], signature(per_idx[i])) for i in idxs]
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


def _pattern(blocks: list[Block], threads: list[Thread], cap: CapturedGraph) -> ForwardPattern:
    first = blocks[0]
    inside = set(first.nodes)
    carried = {t.outputs[0] for t in threads if t.outputs[0] is not None}
    used_out = [n for n in first.nodes if any(u not in inside for u in n.users)]
    side = any(n not in carried and isinstance(n.meta.get("example_value"), torch.Tensor)
               and n.meta["example_value"].dim() >= 2 for n in used_out) and len(threads) == 1
    streams = {t.inputs[0] for t in threads}
    shared = [v for v in external_inputs(first, cap).values() if v not in streams]
    encoder = any(_derives_from_encoder_input(v) for v in shared)
    return classify(FlowShape(len(threads), side, encoder), cap.block_class[first.ref.list_path])


def _derives_from_encoder_input(value: fx.Node, limit: int = 4000) -> bool:
    """Does a value come from the model's encoder / context input (not via the streams)?"""
    return any(v.op == "placeholder" and "_parameters_" not in v.name
               and ("encoder_hidden_states" in v.name.lower() or "context" in v.name.lower())
               for v in walk_back(value, lambda v: True, limit))


def _direct(a: list[Block], b: list[Block], cap: CapturedGraph) -> bool:
    """Lists chain when the values the next list's first block takes from the previous list's
    last block come straight out of it, with no glue in between (FLUX.1's double -> single)."""
    last, first = a[-1], b[0]
    origins = Origins(cap, {x for blk in (last, first) for x in blk.nodes})
    inside = set(last.nodes)
    links = [v for v in external_inputs(first, cap).values() if origins.of(v, last)]
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
    threads = trace_threads(seq, cap, scratch, "chain")
    if threads is None:
        return False
    k = 0
    for g in group[:-1]:
        k += len(g)
        for t in threads:
            if (t.outputs[k - 1] is None) != (t.inputs[k] is None) or (
                    t.inputs[k] is not None and t.inputs[k] is not t.outputs[k - 1]):
                return False
    if any(v is None for t in threads for v in t.inputs) or threads[hidden_thread(threads)].outputs[-1] is None:
        return False  # a stream stops inside the chain (the last block may drop a dead output)
    for g in group:  # each list's own streams (when it has some) all come through the chain
        if len(g) >= 2:
            own = trace_threads(g, cap, scratch, "list")
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
        threads = trace_threads(seq, cap, result, "+".join(lists))
        if threads is None:
            continue
        changed = reshaped(seq, threads[hidden_thread(threads)])
        if changed:
            result.rejected.append(f"{'+'.join(lists)}: {changed}: stages that change the stream's shape "
                                   "(a UNet's down/up blocks), not transformer blocks over a residual stream")
            continue
        patterns, start = {}, 0
        for g in group:
            part = [Thread(t.inputs[start:start + len(g)], t.outputs[start:start + len(g)]) for t in threads]
            patterns[g[0].ref.list_path] = _pattern(g, [t for t in part if t.inputs[0] is not None], cap)
            start += len(g)
        loops.append(BlockLoop(lists, seq, threads, hidden_thread(threads), patterns))
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


