"""Global-state regions: autocast, grad mode and functorch (vmap) nesting inside a graph.

Dynamo records ``with torch.autocast(...)``, ``torch.no_grad()`` and ``torch.vmap`` as marker
nodes (``_enter_autocast`` / ``_exit_autocast``, ``_set_grad_enabled``,
``_vmap_increment_nesting`` / ``_vmap_decrement_nesting``) between the ops they govern. The
rewrite splits a graph into pieces that run in a different order and with the runtime in
between, so a marker pair must never be split: a piece would leave the state switched on
for the runtime and the next piece (numerics change) or exit a region it never entered
(functorch asserts). Instead every op remembers which regions were open where it stood in
the original graph; the markers are dropped, and each piece re-enters, around its own ops,
exactly the regions they need and exits them before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.fx as fx


_UNWRAP = ("_remove_batch_dim", "_unwrap_for_grad", "_unwrap_functional_tensor")


class RegionError(ValueError):
    """The graph's state markers do not nest (a region exits out of order)."""


@dataclass(frozen=True)
class Region:
    """One open region: the marker node that opened it and its kind."""

    enter: fx.Node
    kind: str  # "autocast" | "functorch"


@dataclass(frozen=True)
class State:
    """What an op needs: the open regions (outermost first) and the grad mode (None: as called)."""

    regions: tuple[Region, ...] = ()
    grad: Optional[bool] = None


_EMPTY = State()


def _name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)) if node.op == "call_function" else ""


def _marker(node: fx.Node) -> Optional[str]:
    name = _name(node)
    if name == "_enter_autocast":
        return "autocast-enter"
    if name == "_exit_autocast":
        return "autocast-exit"
    if name in ("_set_grad_enabled", "set_grad_enabled"):
        return "grad"
    if name.endswith("_increment_nesting"):  # _vmap_/_grad_/_jvp_increment_nesting
        return "functorch-enter"
    if name.endswith("_decrement_nesting"):
        return "functorch-exit"
    return None


@dataclass
class StateRegions:
    """The state each op of a graph runs under; ``markers`` are the nodes that changed it."""

    markers: set[fx.Node] = field(default_factory=set)
    state: dict[fx.Node, State] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.markers)

    def of(self, node: fx.Node) -> State:
        return self.state.get(node, _EMPTY)

    def kinds(self) -> list[str]:
        return sorted({_name(m) for m in self.markers})


def find_regions(graph: fx.Graph) -> StateRegions:
    """Walk the graph once, keeping the stack of open regions and the grad mode."""
    out = StateRegions()
    stack: list[Region] = []
    grad: Optional[bool] = None
    for node in graph.nodes:
        kind = _marker(node)
        if kind is None:
            if node.op not in ("placeholder", "output", "get_attr"):
                out.state[node] = State(tuple(stack), grad)
            continue
        out.markers.add(node)
        if kind.endswith("enter") and node.all_input_nodes:  # re-entering needs constant arguments
            raise RegionError(f"{node.name} opens a region with arguments computed in the graph")
        if kind == "autocast-enter":
            stack.append(Region(node, "autocast"))
        elif kind == "functorch-enter":
            stack.append(Region(node, "functorch"))
        elif kind == "autocast-exit":
            if not stack or stack[-1].enter is not node.args[0]:
                raise RegionError(f"{node.name} exits an autocast region that is not the innermost open one")
            stack.pop()
        elif kind == "functorch-exit":
            if not stack or stack[-1].kind != "functorch":
                raise RegionError(f"{node.name} exits a functorch level that is not the innermost open region")
            stack.pop()
        else:
            value = node.args[0] if node.args else node.kwargs.get("mode")
            if not isinstance(value, bool):
                raise RegionError(f"{node.name} sets grad mode from a traced value")
            grad = value
    if stack:
        raise RegionError(f"region opened by {stack[-1].enter.name} is never closed in the graph")
    return out


def check_not_split(regions: StateRegions, piece_of: dict[fx.Node, object]) -> None:
    """A value made inside a functorch level (a batched tensor) cannot leave its piece: the
    level ends with the piece. Autocast and grad mode carry no such values."""
    for node, st in regions.state.items():
        if _name(node) in _UNWRAP:
            continue  # a plain tensor again
        if any(r.kind == "functorch" for r in st.regions) and node in piece_of:
            if any(piece_of.get(u, piece_of[node]) != piece_of[node] for u in node.users):
                raise RegionError(f"{node.name} is made inside a vmap/functorch level but used in another "
                                  "cached piece")


class Reenter:
    """Emits, into one piece's graph, the markers that move it from one state to the next."""

    def __init__(self, graph: fx.Graph):
        self.g = graph
        self.open: list[tuple[Region, fx.Node]] = []  # (region, the piece's own enter node)
        self.grad: Optional[bool] = None
        self.saved_grad: Optional[fx.Node] = None

    def to(self, want: State) -> None:
        keep = 0
        while (keep < len(self.open) and keep < len(want.regions)
               and self.open[keep][0] == want.regions[keep]):
            keep += 1
        while len(self.open) > keep:
            self._exit(*self.open.pop())
        if want.grad != self.grad:
            if self.saved_grad is None:
                self.saved_grad = self.g.call_function(torch.is_grad_enabled)
            self.g.call_function(torch._C._set_grad_enabled,
                                 (want.grad if want.grad is not None else self.saved_grad,))
            self.grad = want.grad
        for region in want.regions[keep:]:
            enter = region.enter
            self.open.append((region, self.g.call_function(enter.target, enter.args, dict(enter.kwargs))))

    def local(self, enter: fx.Node) -> fx.Node:
        """The piece's own copy of an open region's enter marker (an op may read it)."""
        for region, node in self.open:
            if region.enter is enter:
                return node
        raise RegionError(f"an op reads {enter.name}, a region its piece does not have open")

    def close(self) -> None:
        """Leave the piece in the state it was called in."""
        self.to(_EMPTY)

    def _exit(self, region: Region, local_enter: fx.Node) -> None:
        if region.kind == "autocast":
            self.g.call_function(torch.amp.autocast_mode._exit_autocast, (local_enter,))
        else:
            name = _name(region.enter).replace("_increment_", "_decrement_")
            module = __import__(region.enter.target.__module__, fromlist=[name])
            self.g.call_function(getattr(module, name), ())
