"""Rewrite: split the graph into ``pre | Fn | middle | Bn | post`` pieces per loop.

Every op gets the segment of its block (Fn / middle / Bn of loop k; DBPrune: one middle
segment per block); an op outside the blocks gets the latest segment among its inputs, and
never one earlier than the Bn of the loop it follows (glue after a loop joins that loop's Bn
piece, glue before the first loop joins its Fn piece: one piece call fewer each). Because a
segment is never lower than its inputs' segments, running the pieces in segment order respects
every data dependency, and glue inside the loop (a control hint added after block 5, a perceiver
between blocks) lands in the middle by construction. Values live in a flat environment of slots: graph arguments first, then piece
outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx

from .capture import CapturedGraph
from .plan import CachePlan
from .regions import Reenter, check_not_split

_ROLE_RANK = {"Fn": 1, "middle": 2, "Bn": 3}
Seg = tuple[int, int, int]  # (loop, role rank: 0 glue before / 1 Fn / 2 middle / 3 Bn, block for DBPrune)


@dataclass(frozen=True)
class Slot:
    """A reference to an environment slot inside the output structure."""

    index: int


@dataclass
class Piece:
    kind: str  # "glue" | "Fn" | "middle" | "Bn"
    loop: Optional[int]
    gm: fx.GraphModule
    inputs: list[int]
    outputs: list[int]
    block: Optional[int] = None  # the block of a per-block (DBPrune) middle piece
    spec: Optional["MiddleSpec"] = None  # for middle pieces: how to skip them

    def __repr__(self) -> str:
        nodes = sum(1 for n in self.gm.graph.nodes if n.op not in ("placeholder", "output"))
        where = f" loop {self.loop}" if self.loop is not None else ""
        where += f" block {self.block}" if self.block is not None else ""
        return f"Piece({self.kind}{where}, {nodes} ops, {len(self.inputs)} in, {len(self.outputs)} out)"


@dataclass
class MiddleSpec:
    """What the runtime needs to skip one loop's middle piece."""

    hidden_in0: int  # hidden stream entering the loop's first block
    hidden_inF: int  # hidden stream entering the middle (= leaving Fn; DBPrune: entering the block)
    residual_pairs: list[tuple[int, int]]  # (middle input slot, middle output slot)
    hidden_pair: Optional[int]  # index of the hidden stream in residual_pairs
    value_outputs: list[int]  # non-tensor middle outputs (sizes), reused as stored values
    unpaired: list[str] = field(default_factory=list)  # tensor outputs with no stream: never cache
    # set by ``fold`` when the cache's tensor work runs inside the pieces (None: computed eagerly)
    measured: Optional[int] = None  # Fn piece output: the Fn residual x_F - x_0
    measured_sum: Optional[int] = None  # Fn piece output: sum|x_F - x_0| (fp32), the next diff's denominator
    residuals: list[int] = field(default_factory=list)  # middle outputs: out - in per residual pair
    residual_poison: Optional[int] = None  # middle output: 0, or NaN when any residual is not finite
    ref_input: Optional[int] = None  # Fn piece input: the reference the runner expects this step to use
    ref_like: Any = None  # the reference's layout: the slot of a tensor shaped like it, or (shape, dtype, device)
    measured_num: Optional[int] = None  # Fn piece output: sum|measured - ref_input| (fp32), the diff's numerator


@dataclass
class SplitProgram:
    pieces: list[Piece]
    n_args: int
    n_slots: int
    output: Any  # the graph's output structure with slots in place of nodes
    arg_names: list[str] = field(default_factory=list)


def _segments(cap: CapturedGraph, cplan: CachePlan) -> dict[fx.Node, Seg]:
    own_seg: dict[fx.Node, Seg] = {}
    ends = []
    for k, lp in enumerate(cplan.loops):
        for i, block in enumerate(lp.loop.blocks):
            role = lp.role(i)
            for node in block.nodes:
                own_seg[node] = (k, _ROLE_RANK[role], i if role == "middle" and lp.per_block else 0)
        ends.append(cap.order[lp.loop.blocks[-1].last])
    seg: dict[fx.Node, Seg] = {}
    for node in cap.gm.graph.nodes:
        if node.op in ("placeholder", "output") or node in cap.regions.markers:
            continue  # state markers belong to no piece: each piece re-enters what it needs
        # glue before the first loop joins its Fn piece (both always run: one piece call fewer)
        floor = max(((k, 3, 0) for k, end in enumerate(ends) if cap.order[node] > end), default=(0, 1, 0))
        own = own_seg.get(node, floor)
        seg[node] = max([own] + [seg[a] for a in node.all_input_nodes if a in seg])
    return seg


def _kind(s: Seg) -> str:
    return ("glue", "Fn", "middle", "Bn")[s[1]]


def split(cap: CapturedGraph, cplan: CachePlan) -> SplitProgram:
    gm = cap.gm
    seg = _segments(cap, cplan)
    check_not_split(cap.regions, seg)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    slot: dict[fx.Node, int] = {n: i for i, n in enumerate(placeholders)}
    next_slot = len(placeholders)
    pieces: list[Piece] = []
    # the runtime reads each loop's hidden stream at loop entry (the Fn residual's base), even
    # when no other piece uses it
    keep = {lp.loop.threads[lp.loop.hidden].inputs[0] for lp in cplan.loops}
    # each op of a block remembers its (loop, block): regional lowering compiles blocks, not pieces
    block_of = {node: (k, i) for k, lp in enumerate(cplan.loops)
                for i, block in enumerate(lp.loop.blocks) for node in block.nodes}
    by_seg: dict[Seg, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node in seg:
            by_seg.setdefault(seg[node], []).append(node)
    for s in sorted(by_seg):
        members = by_seg[s]
        inside = set(members)
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        inputs: list[int] = []
        for node in members:  # placeholders first: the state markers below are ops
            for a in node.all_input_nodes:
                if a not in inside and a not in env and a not in cap.regions.markers:
                    ph = g.placeholder(a.name)
                    ph.meta = dict(a.meta)
                    env[a] = ph
                    inputs.append(slot[a])
        state = Reenter(g)
        for node in members:
            state.to(cap.regions.of(node))
            env[node] = g.node_copy(node, lambda a: env[a] if a in env else state.local(a))
            if node in block_of:
                env[node].meta["dcp_block"] = block_of[node]
        state.close()
        exported = [n for n in members if n in keep or any(u not in inside for u in n.users)]
        g.output(tuple(env[n] for n in exported))
        outputs = []
        for n in exported:
            slot[n] = next_slot
            outputs.append(next_slot)
            next_slot += 1
        kind = _kind(s)
        loop = None if kind == "glue" else s[0]
        block = s[2] if kind == "middle" and cplan.loops[s[0]].per_block else None
        pieces.append(Piece(kind, loop, fx.GraphModule(gm, g), inputs, outputs, block))
    out_node = gm.graph.output_node()
    output = fx.node.map_arg(out_node.args[0], lambda n: Slot(slot[n]))
    prog = SplitProgram(pieces, len(placeholders), next_slot, output,
                        arg_names=[p.name for p in placeholders])
    for piece in pieces:
        if piece.kind == "middle":
            lp = cplan.loops[piece.loop]
            if piece.block is not None:
                first, end = piece.block, piece.block + 1
            else:
                first, end = lp.middle.start, lp.middle.stop
            piece.spec = _middle_spec(lp, piece, first, end, slot)
    return prog


def _middle_spec(lp, middle: Piece, f: int, end: int, slot: dict[fx.Node, int]) -> MiddleSpec:
    """Streams crossing blocks [f, end) of the loop: value entering block f -> value entering
    block ``end`` (or leaving the loop)."""
    loop, n = lp.loop, len(lp.loop)
    mid_out = set(middle.outputs)
    pairs: list[tuple[int, int]] = []
    hidden_pair = None
    for ti, t in enumerate(loop.threads):
        src = t.inputs[f]
        dst = t.inputs[end] if end < n else t.outputs[n - 1]
        if src is None or dst is None or slot.get(dst) not in mid_out:
            continue
        if ti == loop.hidden:
            hidden_pair = len(pairs)
        pairs.append((slot[src], slot[dst]))
    paired = {o for _, o in pairs}
    node_of = {slot[n]: n for n in slot}
    rest = [o for o in middle.outputs if o not in paired]
    tensors = [o for o in rest if isinstance(node_of[o].meta.get("example_value"), torch.Tensor)]
    hidden = loop.threads[loop.hidden]
    return MiddleSpec(
        hidden_in0=slot[hidden.inputs[0]],
        hidden_inF=slot[hidden.inputs[f]],
        residual_pairs=pairs,
        hidden_pair=hidden_pair,
        value_outputs=[o for o in rest if o not in tensors],
        unpaired=[node_of[o].name for o in tensors],
    )
