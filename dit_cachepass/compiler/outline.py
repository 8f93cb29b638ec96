"""Outline: run a piece as calls to compiled regions, one compiled graph per block structure.

``lowering="regional"`` on the graph path. The rewrite tags each op of a block with its
(loop, block) (``node.meta["dcp_block"]``). Here every block of a piece, and on a GPU every
run of glue long enough to pay for a compile, becomes a *region*: a sub-graph whose inputs are the
values it reads and whose outputs are the values read after it. Regions with the same ops in
the same order, called with inputs of the same layout, share one compiled function
(``RegionCache``): the 19 double and 38 single blocks of FLUX.1-dev compile as two graphs, as
with diffusers' ``compile_repeated_blocks``. Dynamo lifts parameters to graph inputs, so a
shared graph takes each block's weights as arguments, and no weights are copied.

Unlike the block path (where each block is its own ``torch.compile``), the graph is captured
once and guarded once per forward: a block call is a direct call into Inductor's code, and the
cache decisions, the fold and the glue stay those of the full lowering.

A piece is compiled whole (``None`` from ``outline``) when it cannot be cut safely: state
markers (autocast / grad regions), symbolic sizes, a block value that is not a tensor, or a
block that reads a value made after its first op.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from .regions import _marker


def layout_strides(shape: Sequence[int], stride: Sequence[int]) -> tuple:
    """Strides, less those of size-1 dims: no index ever moves along such a dim, and Inductor's
    entry check (``assert_size_stride``) ignores them too. FLUX's single blocks return slices of
    one (1, text + image, D) tensor, strided (T*D, D, 1) where the first block's inputs are
    (N*D, D, 1): a piece or region keyed on raw strides compiles twice for one layout."""
    return tuple(s if n != 1 else None for n, s in zip(shape, stride))


# a run of glue with fewer ops than this runs as Python code in the piece (one compile fewer)
MIN_GLUE_OPS = 32
_FREE = (operator.getitem,)


def _canon(v: Any, local: dict[fx.Node, int]) -> Any:
    """A hashable, name-free form of a node argument: nodes become their position."""
    if isinstance(v, fx.Node):
        return ("%", local[v])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_canon(x, local) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple((k, _canon(x, local)) for k, x in v.items()))
    if isinstance(v, slice):
        return ("slice", _canon(v.start, local), _canon(v.stop, local), _canon(v.step, local))
    try:
        hash(v)
        return v
    except TypeError:
        return ("repr", repr(v))


def structure_key(graph: fx.Graph) -> tuple:
    """Equal for two graphs with the same ops, arguments and constants in the same order
    (names and parameters aside): the graphs of two blocks of one class."""
    local: dict[fx.Node, int] = {}
    key = []
    for i, node in enumerate(graph.nodes):
        local[node] = i
        target = node.target if node.op in ("call_function", "call_method") else (
            node.op if node.op == "placeholder" else str(node.target))
        key.append((node.op, target, _canon(node.args, local), _canon(node.kwargs, local)))
    return tuple(key)


def _layout(args: Sequence[Any]) -> tuple:
    """What a compiled region is specialized to besides its ops: each input's layout, and which
    inputs are the same tensor (a graph compiled for distinct inputs assumes no aliasing)."""
    first: dict[int, int] = {}
    same = tuple(first.setdefault(id(a), k) for k, a in enumerate(args))
    return same + tuple((tuple(a.shape), layout_strides(a.shape, a.stride()), a.dtype, a.device, a.requires_grad)
                        if isinstance(a, torch.Tensor) else ("value", a) for a in args)


def _same_op(big: fx.Node, small: fx.Node, env: dict[fx.Node, fx.Node]) -> bool:
    if big.op != small.op or (big.op != "placeholder" and big.target != small.target):
        return False
    try:
        return bool(fx.map_arg((small.args, small.kwargs), lambda n: env[n]) == (big.args, big.kwargs))
    except (KeyError, RuntimeError):  # a value big does not have / a tensor constant
        return False


def extends(big: fx.Graph, small: fx.Graph) -> Optional[tuple[int, ...]]:
    """If ``small`` is ``big`` less some ops whose values only ``big``'s output reads, the
    positions of ``small``'s outputs among ``big``'s; else None. The last block of a loop is
    such a graph: an output nothing reads after the loop (FLUX's text stream after its last
    single block) was dead code, so its slice is missing, and it runs the full block's graph
    instead of compiling its own."""
    bnodes = [n for n in big.nodes if n.op != "output"]
    env: dict[fx.Node, fx.Node] = {}
    skipped: set[fx.Node] = set()
    i = 0
    for node in small.nodes:
        if node.op == "output":
            break
        while i < len(bnodes) and not _same_op(bnodes[i], node, env):
            skipped.add(bnodes[i])
            i += 1
        if i == len(bnodes):
            return None
        env[node] = bnodes[i]
        i += 1
    skipped.update(bnodes[i:])
    out = big.output_node()
    if any(n.op == "placeholder" or any(u is not out and u not in skipped for u in n.users) for n in skipped):
        return None
    bouts = list(out.args[0])
    souts = [env.get(n) for n in small.output_node().args[0]]
    if any(n is None or n not in bouts for n in souts):
        return None
    return tuple(bouts.index(n) for n in souts)


class RegionCache:
    """Compiled regions by (structure, input layout), shared by the pieces of one runner."""

    def __init__(self, compile_fn: Callable[[fx.GraphModule, Sequence[Any]], Callable]):
        self.compile_fn = compile_fn
        self.fns: dict[tuple, Callable] = {}
        self.compiled: dict[tuple, list[tuple[fx.Graph, Callable]]] = {}  # by layout

    def get(self, key: tuple, gm: fx.GraphModule, args: Sequence[Any]) -> Callable:
        layout = _layout(args)
        fn = self.fns.get((key, layout))
        if fn is None:
            fn = self.fns[(key, layout)] = self._reuse(gm.graph, layout) or self._compile(gm, args, layout)
        return fn

    def _compile(self, gm: fx.GraphModule, args: Sequence[Any], layout: tuple) -> Callable:
        fn = self.compile_fn(gm, args)
        self.compiled.setdefault(layout, []).append((gm.graph, fn))
        return fn

    @property
    def compiles(self) -> int:
        """Regions actually compiled (``fns`` also holds the regions served by a bigger one)."""
        return sum(len(v) for v in self.compiled.values())

    def _reuse(self, graph: fx.Graph, layout: tuple) -> Optional[Callable]:
        """A compiled region that computes this one's outputs and more (``extends``)."""
        for big, fn in self.compiled.get(layout, ()):
            pick = extends(big, graph)
            if pick is not None:
                return lambda *args, fn=fn, pick=pick: _pick(fn(*args), pick)
        return None

    def __repr__(self) -> str:
        return f"RegionCache({self.compiles} compiled regions, {len(self.fns)} region kinds)"


def _pick(outs: Sequence[Any], pick: tuple[int, ...]) -> tuple:
    return tuple(outs[k] for k in pick)


def _site(gm: fx.GraphModule, key: tuple, cache: RegionCache, name: str) -> Callable:
    """The call of one region in the piece's code: bound to its compiled function on first call
    (the piece is compiled per input layout, so the region's layout never changes after that).
    ``site.slot[0]`` is that function (None before the first call), ``site.region`` the graph."""
    slot: list[Optional[Callable]] = [None]

    def site(*args: Any) -> Any:
        fn = slot[0]
        if fn is None:
            fn = slot[0] = cache.get(key, gm, args)
        return fn(*args)

    site.__name__ = site.__qualname__ = name
    site.slot = slot  # type: ignore[attr-defined]
    site.region = gm  # type: ignore[attr-defined]
    return site


@dataclass
class _Group:
    members: list[fx.Node]
    block: Optional[tuple]  # (loop, block) or None for glue


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("example_value"), torch.Tensor) or bool(node.meta.get("dcp_fold"))


def _groups(nodes: list[fx.Node]) -> list[_Group]:
    """Blocks by their tag (a block's ops need not be contiguous), glue by contiguous runs."""
    by_block: dict[tuple, _Group] = {}
    groups: list[_Group] = []
    run: Optional[_Group] = None
    for node in nodes:
        if node.op in ("placeholder", "output"):
            continue
        tag = node.meta.get("dcp_block")
        if tag is None:
            if run is None:
                run = _Group([], None)
                groups.append(run)
            run.members.append(node)
            continue
        run = None
        if tag not in by_block:
            by_block[tag] = _Group([], tag)
            groups.append(by_block[tag])
        by_block[tag].members.append(node)
    return groups


def outline(gm: fx.GraphModule, cache: RegionCache, compile_glue: bool = True) -> Optional[fx.GraphModule]:
    """``gm`` as a graph of region calls (and short glue), or None if it must compile whole.
    ``compile_glue=False`` (a piece on the CPU): only blocks are compiled, all glue runs as the
    piece's Python code, and a piece without blocks is returned as it is, as diffusers'
    ``compile_repeated_blocks`` does. On a CPU an eager op costs no kernel launch, and the
    glue's compiles cost more time than they ever save (``benchmarks/RESULTS.md``)."""
    nodes = list(gm.graph.nodes)
    if any(_marker(n) for n in nodes):
        return None
    index = {n: i for i, n in enumerate(nodes)}
    groups = _groups(nodes)
    if not any(g.block is not None for g in groups):
        return None if compile_glue else gm
    compiled: list[_Group] = []
    for g in groups:
        inside = set(g.members)
        outs = [n for n in g.members if any(u not in inside for u in n.users)]
        values_ok = all(_is_tensor(n) for n in outs) and all(
            _is_tensor(a) for n in g.members for a in n.all_input_nodes if a not in inside)
        if g.block is not None:
            if not values_ok:
                return None
            compiled.append(g)
        elif compile_glue and values_ok and outs and sum(n.target not in _FREE for n in g.members) >= MIN_GLUE_OPS:
            compiled.append(g)
    region_of = {n: g for g in compiled for n in g.members}
    # a region runs where its first op stood: everything it reads must be ready by then
    ready = {n: index[region_of[n].members[0]] if n in region_of else index[n] for n in nodes}
    for g in compiled:
        inside = set(g.members)
        start = index[g.members[0]]
        if any(ready[a] >= start for n in g.members for a in n.all_input_nodes if a not in inside):
            return None

    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for k, node in enumerate(nodes):
        g = region_of.get(node)
        if g is None:
            env[node] = out.node_copy(node, lambda a: env[a])
            continue
        if node is not g.members[0]:
            continue  # emitted with its region
        sub, inputs, outputs = _region_graph(g)
        sub_gm = fx.GraphModule(gm, sub)
        what = f"block_{g.block[0]}_{g.block[1]}" if g.block is not None else f"glue_{k}"
        call = out.call_function(_site(sub_gm, structure_key(sub), cache, what),
                                 tuple(env[a] for a in inputs))
        for j, o in enumerate(outputs):
            env[o] = out.call_function(operator.getitem, (call, j))
            env[o].meta = dict(o.meta)
    return fx.GraphModule(gm, out)


def _region_graph(g: _Group) -> tuple[fx.Graph, list[fx.Node], list[fx.Node]]:
    inside = set(g.members)
    sub = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[fx.Node] = []
    for node in g.members:
        for a in node.all_input_nodes:
            if a not in inside and a not in env:
                env[a] = sub.placeholder(f"in_{len(inputs)}")
                env[a].meta = dict(a.meta)
                inputs.append(a)
    for node in g.members:
        env[node] = sub.node_copy(node, lambda a: env[a])
    outputs = [n for n in g.members if any(u not in inside for u in n.users)]
    sub.output(tuple(env[n] for n in outputs))
    return sub, inputs, outputs
