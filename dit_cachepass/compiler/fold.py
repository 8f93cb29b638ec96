"""Fold: move the cache's per-step tensor work into the pieces' own graphs.

A computed DBCache step needs the Fn residual ``x_F - x_0`` and its L1 sum (the decision's
reference and denominator), the numerator ``sum|x_F - x_0 - ref|`` of its diff, and, per stream,
the middle's residual ``out - in`` with a check that all are finite (a NaN kept would poison later
steps). The numerator needs the reference before the Fn piece runs, when the call's branch is not
known yet (that needs the timestep, read after Fn so that a GPU sync overlaps its work): the
runner passes the reference it expects and the middle uses the numerator only if that guess was
the state's reference (same tensor), else it computes the diff as before. Done eagerly, that is ~25 small ops and
a host sync after the middle; folded into the Fn and middle graphs, Inductor fuses each into the
kernel that produces its operand, and the finiteness travels as a 0-d ``0 * sum`` (NaN when
anything is non-finite) that the next decision reads anyway, so a computed step syncs once.

Only DBCache middles (one per loop) are folded: a DBPrune block's reference is its input, made
by the piece before it, and keeps the eager path. A piece whose tensors cannot be found or whose
shapes differ is left as it is; the runtime then takes the eager path.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
import torch.fx as fx

from .rewrite import Piece, SplitProgram


def _node_of(piece: Piece, slot: int) -> Optional[fx.Node]:
    """The node of ``piece``'s graph holding environment slot ``slot`` (an input or an output)."""
    if slot in piece.inputs:
        return [n for n in piece.gm.graph.nodes if n.op == "placeholder"][piece.inputs.index(slot)]
    if slot in piece.outputs:
        return piece.gm.graph.output_node().args[0][piece.outputs.index(slot)]
    return None


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("example_value"), b.meta.get("example_value")
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.dtype == vb.dtype
            and va.dim() == vb.dim() and all(str(x) == str(y) for x, y in zip(va.shape, vb.shape)))


def _abs_sum(g: fx.Graph, x: fx.Node, like: fx.Node) -> fx.Node:
    """sum|x| in fp32 (fp64 for fp64 tensors): fp16 activations cannot overflow the check."""
    wide = like.meta["example_value"].dtype == torch.float64
    return g.call_function(torch.sum, (g.call_function(torch.abs, (x,)),),
                           {"dtype": torch.float64 if wide else torch.float32})


def _ref_layout(fn: Piece, slot: int, node: fx.Node) -> Any:
    """How the runner learns the reference's layout before the Fn piece runs: the slot of the
    loop input when it comes into the piece, else the (static) shape the graph was traced with.
    None when neither is known (symbolic shapes of a tensor made inside the piece)."""
    if slot in fn.inputs:
        return slot
    v = node.meta.get("example_value")
    if isinstance(v, torch.Tensor) and all(isinstance(d, int) for d in v.shape):
        return (tuple(v.shape), v.dtype, v.device)
    return None


@contextlib.contextmanager
def _inserting_at_end(g: fx.Graph) -> Iterator[None]:
    """New ops before the output, tagged ``dcp_fold``: they have no fake value, but they are
    all tensor ops (so ``outline`` may compile them with their neighbours)."""
    before = set(g.nodes)
    with g.inserting_before(g.output_node()):
        yield
    for node in g.nodes:
        if node not in before:
            node.meta["dcp_fold"] = True


def _append_input(prog: SplitProgram, piece: Piece, g: fx.Graph, like: fx.Node, name: str) -> tuple[fx.Node, int]:
    """A new placeholder after the piece's last one, fed from a new environment slot."""
    last = [n for n in g.nodes if n.op == "placeholder"][-1]
    with g.inserting_after(last):
        node = g.placeholder(name)
    node.meta.update({k: v for k, v in like.meta.items() if k in ("example_value", "val", "tensor_meta")})
    slot = prog.n_slots
    prog.n_slots += 1
    piece.inputs.append(slot)
    return node, slot


def _append_outputs(prog: SplitProgram, piece: Piece, g: fx.Graph, nodes: list[fx.Node]) -> list[int]:
    out = g.output_node()
    out.args = (tuple(out.args[0]) + tuple(nodes),)
    slots = list(range(prog.n_slots, prog.n_slots + len(nodes)))
    prog.n_slots += len(nodes)
    piece.outputs.extend(slots)
    piece.gm.recompile()
    return slots


def fold(prog: SplitProgram) -> SplitProgram:
    """Add ``measured`` (the Fn residual) and its sum to each loop's Fn piece and the residuals
    plus a finiteness poison to its DBCache middle piece; record their slots in the middle's spec."""
    fn_piece = {p.loop: p for p in prog.pieces if p.kind == "Fn"}
    for mid in prog.pieces:
        spec = mid.spec
        if mid.kind != "middle" or spec is None or mid.block is not None or spec.unpaired:
            continue
        fn = fn_piece.get(mid.loop)
        if fn is None:
            continue
        x_f, x_0 = _node_of(fn, spec.hidden_inF), _node_of(fn, spec.hidden_in0)
        ins = [_node_of(mid, i) for i, _ in spec.residual_pairs]
        outs = [_node_of(mid, o) for _, o in spec.residual_pairs]
        pairs = list(zip(ins, outs))
        if (x_f is None or x_0 is None or x_f is x_0 or not _same_shape(x_f, x_0) or not pairs
                or any(i is None or o is None or not _same_shape(i, o) for i, o in pairs)):
            continue
        g = fn.gm.graph
        like = _ref_layout(fn, spec.hidden_in0, x_0)
        ref = None
        if like is not None:
            ref, spec.ref_input = _append_input(prog, fn, g, x_f, "dit_cachepass_reference")
            spec.ref_like = like
        with _inserting_at_end(g):
            measured = g.call_function(torch.sub, (x_f, x_0))
            total = _abs_sum(g, measured, x_f)
            extra = [_abs_sum(g, g.call_function(torch.sub, (measured, ref)), x_f)] if ref is not None else []
        spec.measured, spec.measured_sum, *num = _append_outputs(prog, fn, g, [measured, total, *extra])
        spec.measured_num = num[0] if num else None
        g = mid.gm.graph
        with _inserting_at_end(g):
            residuals = [g.call_function(torch.sub, (o, i)) for i, o in pairs]
            total = _abs_sum(g, residuals[0], ins[0])
            for r, i in zip(residuals[1:], ins[1:]):
                total = g.call_function(torch.add, (total, _abs_sum(g, r, i)))
            poison = g.call_function(torch.mul, (total, 0))  # 0, or NaN when any residual is not finite
        *spec.residuals, spec.residual_poison = _append_outputs(prog, mid, g, residuals + [poison])
    return prog
