"""The block path: cache at the block-list level when no single dynamo graph holds the loop.

Data-dependent MoE routing, ``.tolist()`` in every block or ``.item()`` before the loop break
the forward into graphs that each hold part of the loop (or none). cache-dit caches such
models because it works on the block list, not the graph; this path does the same, with the
graph path's runtime (``MiddleCall``: the same state, policies, kernels and ``summary()``):

  trace : one eager call with hooks on the blocks of every top-level ModuleList records each
          block call's arguments and outputs
  match : main lists = lists whose blocks run 0..n-1 in order; streams = block outputs that
          are, as objects, arguments of the next block (tensor identity), so glue between
          blocks is seen as such; consecutive lists joined without glue form one chain
  plan  : the graph path's ``plan`` (Fn / middle / Bn per loop)
  run   : each block's forward is wrapped; on a cached step the middle blocks pass their
          stream inputs through and the last one returns entry + stored residual; blocks are
          compiled regionally (one compiled forward per block class, parameters as inputs)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..compiler.patterns import FlowShape, ForwardPattern, classify
from ..compiler.matcher import torch_layer_class
from ..compiler.plan import LoopPlan, plan
from .middle import MiddleCall

MIN_LIST_SHARE = 0.2  # as the graph path: a list with < 20 % of the largest list's parameters is auxiliary


@dataclass
class BlockCall:
    list_name: str
    index: int
    module: nn.Module
    inputs: dict[str, Any]  # bound arguments by parameter name
    outputs: list[Any]  # flattened: a tensor output is [t], a tuple/list its elements
    tuple_output: bool = False  # the block returned a tuple/list (else one tensor)


@dataclass
class ListBlock:
    """One block of a block-path loop: where each stream enters (parameter) and leaves (output position)."""

    module: nn.Module
    ref: str
    signature: inspect.Signature
    stream_params: list[Optional[str]] = field(default_factory=list)
    stream_outputs: list[Optional[int]] = field(default_factory=list)
    n_outputs: int = 1
    tuple_output: bool = False


@dataclass
class BlockListLoop:
    """What the matcher's ``BlockLoop`` is to the graph path (``plan`` needs ``name``, ``len``)."""

    lists: list[str]
    blocks: list[ListBlock]
    hidden: int
    patterns: dict[str, ForwardPattern]
    streams: int
    never_cache: Optional[str] = None

    @property
    def name(self) -> str:
        return "+".join(self.lists)

    def __len__(self) -> int:
        return len(self.blocks)


def _flat(out: Any) -> tuple[list[Any], bool]:
    if isinstance(out, (tuple, list)):
        return list(out), True
    return [out], False


def top_level_lists(module: nn.Module) -> dict[str, nn.ModuleList]:
    # lists of plain torch.nn layers (an MLP's) hold no transformer blocks
    return {name: m for name, m in module.named_children()
            if isinstance(m, nn.ModuleList) and len(m) >= 1 and not torch_layer_class(type(m[0]))}


def trace_block_calls(module: nn.Module, run: Callable[[], Any]) -> tuple[Any, list[BlockCall]]:
    """Run ``run()`` (one eager forward of ``module``) with hooks recording every call of every
    block of every top-level ModuleList; returns its output and the calls in order."""
    calls: list[BlockCall] = []
    handles = []
    pending: dict[int, list[dict]] = {}
    for name, lst in top_level_lists(module).items():
        for i, block in enumerate(lst):
            sig = inspect.signature(block.forward)

            def pre(mod, args, kwargs, sig=sig):
                try:
                    bound = sig.bind(*args, **kwargs)
                    bound.apply_defaults()
                    pending.setdefault(id(mod), []).append(dict(bound.arguments))
                except TypeError:
                    pending.setdefault(id(mod), []).append({})

            def post(mod, args, kwargs, out, name=name, i=i):
                inputs = pending[id(mod)].pop()
                outputs, is_tuple = _flat(out)
                calls.append(BlockCall(name, i, mod, inputs, outputs, is_tuple))

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(block.register_forward_hook(post, with_kwargs=True))
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return out, calls


def _identity_edges(a: BlockCall, b: BlockCall, through_glue: bool = True) -> dict[int, str]:
    """Output positions of call ``a`` whose tensor is, as an object, an argument of call ``b``.
    With ``through_glue``, an output that glue rebuilt on the way (HiDream slices the encoder
    stream and concatenates the next layer's text features) pairs with the one remaining
    argument of the same shape and dtype, when exactly one output and one argument are left."""
    edges = {}
    for p, t in enumerate(a.outputs):
        if isinstance(t, torch.Tensor):
            for q, v in b.inputs.items():
                if v is t:
                    edges[p] = q
                    break
    if through_glue:
        def key(t: Any) -> Any:
            return (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) and t.dim() >= 2 else None

        outs = [p for p, t in enumerate(a.outputs) if p not in edges and key(t) is not None]
        args = [q for q, v in b.inputs.items() if q not in edges.values() and key(v) is not None]
        for p in outs:
            hits = [q for q in args if key(b.inputs[q]) == key(a.outputs[p])]
            if len(hits) == 1 and sum(key(a.outputs[o]) == key(a.outputs[p]) for o in outs) == 1:
                edges[p] = hits[0]
    return edges


def _pattern(first: BlockCall, block: ListBlock, streams: int, constant: set[str]) -> ForwardPattern:
    carried = {p for p in block.stream_outputs if p is not None}
    side = streams == 1 and any(isinstance(t, torch.Tensor) and t.dim() >= 2 and p not in carried
                                for p, t in enumerate(first.outputs))
    encoder = any("encoder" in q or "context" in q for q in constant)
    return classify(FlowShape(streams, side, encoder), type(first.module))


def match_block_calls(module: nn.Module, calls: list[BlockCall], layout: str = "auto"
                      ) -> tuple[list[BlockListLoop], list[str], list[str]]:
    """Main lists, their streams (by tensor identity) and patterns; returns loops, reasons, notes."""
    reasons, notes = [], []
    lists = top_level_lists(module)
    by_list: dict[str, list[int]] = {}
    for k, c in enumerate(calls):
        by_list.setdefault(c.list_name, []).append(k)
    cands = []
    for name, ks in by_list.items():
        idxs = [calls[k].index for k in ks]
        if idxs != list(range(len(lists[name]))):
            reasons.append(f"{name}: blocks called in the order {idxs[:8]}, not once each in order")
        elif ks != list(range(ks[0], ks[0] + len(ks))):
            notes.append(f"{name}: called between the blocks of another list; glue of its loop")
        else:
            cands.append((name, ks))
    if not cands:
        return [], reasons or ["no top-level ModuleList whose blocks are called in sequence"], notes
    size = {n: sum(p.numel() for p in lists[n].parameters()) for n, _ in cands}
    largest = max(size.values()) or 1
    groups: list[list[tuple[str, list[int]]]] = []
    for name, ks in sorted(cands, key=lambda c: c[1][0]):
        prev = groups[-1][-1] if groups else None
        chained = (prev is not None and layout != "per_list" and prev[1][-1] + 1 == ks[0]
                   and _chains(calls[prev[1][-1]], calls[ks[0]]))
        if chained:
            groups[-1].append((name, ks))
        elif size[name] < MIN_LIST_SHARE * largest:
            notes.append(f"{name}: small auxiliary list; not cached")
        else:
            groups.append([(name, ks)])
    loops = []
    for group in groups:
        seq = [calls[k] for _, ks in group for k in ks]
        names = [n for n, _ in group]
        if len(seq) < 2:
            notes.append(f"{names[0]}: a single block with no list to chain to; nothing to cache")
            continue
        loop = _streams(seq, names, reasons)
        if loop is not None:
            loops.append(loop)
    return loops, reasons, notes


def _chains(a: BlockCall, b: BlockCall) -> bool:
    """Every tensor output of a list's last block goes straight into the next list's first."""
    edges = _identity_edges(a, b, through_glue=False)
    return bool(edges) and all(p in edges for p, t in enumerate(a.outputs) if isinstance(t, torch.Tensor)
                               and t.dim() >= 2)


def _streams(seq: list[BlockCall], names: list[str], reasons: list[str]) -> Optional[BlockListLoop]:
    name = "+".join(names)
    edges = [_identity_edges(a, b) for a, b in zip(seq, seq[1:])]
    if not edges[0]:
        reasons.append(f"{name}: no block output is passed on to the next block (not a chain)")
        return None
    # a stream: output position p of block 0 -> parameter q of block 1 -> ... (identity; where glue
    # rebuilt the tensor between two blocks, the same parameter/position as the previous pair of
    # blocks of the same classes)
    starts = sorted(edges[0].items())
    blocks = [ListBlock(c.module, f"{c.list_name}.{c.index}", inspect.signature(c.module.forward),
                        n_outputs=len(c.outputs), tuple_output=c.tuple_output) for c in seq]
    known: dict[tuple[type, type], dict[int, str]] = {}
    for e, (a, b) in zip(edges, zip(seq, seq[1:])):
        if e:
            known.setdefault((type(a.module), type(b.module)), e)
    first_params = _input_params(seq[0], [seq[0].outputs[p] for p, _ in starts])
    for s, (p0, _) in enumerate(starts):
        p = p0
        for i, c in enumerate(seq):
            blocks[i].stream_outputs.append(p)
            if i == 0:
                blocks[i].stream_params.append(first_params[s])
            if i + 1 < len(seq):
                e = edges[i] if p in edges[i] else known.get((type(c.module), type(seq[i + 1].module)), {})
                q = e.get(p) if p is not None else None
                blocks[i + 1].stream_params.append(q)
                # which output of the next block continues the stream: the position that the
                # block after it (or, at the end, the same class) receives as parameter q
                p = _output_for_param(i + 1, q, seq, edges, known) if q is not None else None
    n_streams = len(starts)
    if any(q is None for b in blocks[1:] for q in b.stream_params) or any(
            p is None for b in blocks for p in b.stream_outputs) or None in blocks[0].stream_params:
        reasons.append(f"{name}: a stream could not be followed through every block by tensor identity")
        return None
    hidden = _hidden(blocks[0], seq[0])
    patterns, start = {}, 0
    for n in names:
        k = next(i for i in range(start, len(seq)) if seq[i].list_name == n)
        constant = {q for q, v in seq[k].inputs.items() if isinstance(v, torch.Tensor)
                    and q not in blocks[k].stream_params
                    and all(c.inputs.get(q) is v for c in seq if c.list_name == n)}
        patterns[n] = _pattern(seq[k], blocks[k], n_streams, constant)
        start = k
    never = None
    for b, c in zip(blocks, seq):
        extra = [p for p, t in enumerate(c.outputs) if isinstance(t, torch.Tensor) and p not in b.stream_outputs]
        if extra and never is None:
            never = (f"{b.ref} returns tensor(s) at position(s) {extra} that are not block-to-block streams; "
                     "no residual can rebuild them")
    return BlockListLoop(names, blocks, hidden, patterns, n_streams, never)


def _input_params(call: BlockCall, outs: list[Any]) -> list[Optional[str]]:
    """Block 0's parameter of each stream: the tensor argument of the same shape and dtype,
    in parameter order (hidden_states, encoder_hidden_states ...), each used once."""
    taken: set[str] = set()
    result = []
    for t in outs:
        q = next((q for q, v in call.inputs.items() if q not in taken and isinstance(v, torch.Tensor)
                  and v.shape == t.shape and v.dtype == t.dtype), None)
        if q is not None:
            taken.add(q)
        result.append(q)
    return result


def _output_for_param(i: int, q: str, seq: list[BlockCall], edges: list[dict[int, str]],
                      known: dict) -> Optional[int]:
    c = seq[i]
    if i + 1 < len(seq):
        e = edges[i] or known.get((type(c.module), type(seq[i + 1].module)), {})
        # the output passed on as the same parameter, else the unique same-shaped output
        hit = [p for p, qq in e.items() if qq == q]
        if len(hit) == 1:
            return hit[0]
    v = c.inputs.get(q)
    same = [p for p, t in enumerate(c.outputs) if isinstance(t, torch.Tensor) and isinstance(v, torch.Tensor)
            and t.shape == v.shape and t.dtype == v.dtype]
    return same[0] if len(same) == 1 else None


def _hidden(block: ListBlock, call: BlockCall) -> int:
    """The hidden stream: the one entering as the block's first parameter, else the largest."""
    first = next(iter(block.signature.parameters), None)
    if first in block.stream_params:
        return block.stream_params.index(first)
    sizes = [call.inputs[q].numel() for q in block.stream_params]
    return sizes.index(max(sizes))


class BlockRunner:
    """Installs the wrapped block forwards of every planned loop; ``uninstall`` restores them."""

    def __init__(self, session: Any, loops: list[LoopPlan], compile_block: Callable[[nn.Module], Callable]):
        self.session, self.loops = session, loops
        self.runtimes = [_LoopRuntime(session, lp, compile_block) for lp in loops]

    def begin_call(self) -> None:
        for rt in self.runtimes:
            rt.reset()

    def uninstall(self) -> None:
        for rt in self.runtimes:
            rt.uninstall()


class _LoopRuntime:
    def __init__(self, session: Any, lp: LoopPlan, compile_block: Callable[[nn.Module], Callable]):
        self.session, self.lp = session, lp
        self.loop: BlockListLoop = lp.loop
        self.per_block = lp.per_block
        self.saved: list[tuple[nn.Module, Any]] = []
        for i, b in enumerate(self.loop.blocks):
            self.saved.append((b.module, b.module.__dict__.get("forward")))
            fwd = compile_block(b.module)
            b.module.forward = self._wrap(i, fwd)
        self.reset()

    def uninstall(self) -> None:
        for module, prior in self.saved:
            if prior is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = prior

    def reset(self) -> None:
        self.expected = 0
        self.x0: Optional[torch.Tensor] = None
        self.call: Optional[MiddleCall] = None
        self.cached_outs: Optional[list[torch.Tensor]] = None
        self.pending: Optional[tuple[MiddleCall, Optional[list[torch.Tensor]]]] = None
        self.broken = False

    def _wrap(self, i: int, fwd: Callable) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return self.block(i, fwd, args, kwargs)
        return forward

    def _streams_in(self, i: int, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        b = self.loop.blocks[i]
        bound = b.signature.bind(*args, **kwargs)
        return [bound.arguments.get(q) for q in b.stream_params]

    def _build(self, i: int, streams: list[torch.Tensor]) -> Any:
        """Block i's return value with ``streams`` in its stream positions."""
        b = self.loop.blocks[i]
        if not b.tuple_output:
            return streams[0]
        out: list[Any] = [None] * b.n_outputs
        for p, t in zip(b.stream_outputs, streams):
            out[p] = t
        return tuple(out)

    def block(self, i: int, fwd: Callable, args: tuple, kwargs: dict) -> Any:
        lp, loop = self.lp, self.loop
        if i != self.expected or self.broken:  # blocks called out of the traced order: compute all
            if not self.broken:
                self.broken = True
                self.session.warn_once(f"loop {loop.name}: blocks were called out of the traced order; "
                                       "this call computes every block")
            return fwd(*args, **kwargs)
        self.expected = i + 1
        self.session.place()
        if self.session.unsure is not None:  # a call no state may see (the session says why)
            return fwd(*args, **kwargs)
        if self.pending is not None:
            args, kwargs = self._exit_middle(i, args, kwargs)
        if i == 0:
            self.x0 = self._streams_in(0, args, kwargs)[loop.hidden]
        if i not in lp.middle:
            return fwd(*args, **kwargs)
        ins = self._streams_in(i, args, kwargs)
        if self.per_block:  # DBPrune: each middle block decides on its own input
            if i in lp.config.non_prune_block_ids:
                return fwd(*args, **kwargs)
            call = MiddleCall(self.session, loop.name, lp.config, lp.calibrator_config, i, loop.never_cache,
                              loop.hidden, ins[loop.hidden], None, ins)
            return self._end_middle(i, call, call.cached()[0] if call.cache else None, fwd, args, kwargs, ins)
        if i == lp.middle.start:
            self.call = MiddleCall(self.session, loop.name, lp.config, lp.calibrator_config, None, loop.never_cache,
                                   loop.hidden, ins[loop.hidden], self.x0, ins)
            self.cached_outs = self.call.cached()[0] if self.call.cache else None
        if i < lp.middle.stop - 1:  # cached: pass the streams through; computed: run
            return self._build(i, ins) if self.cached_outs is not None else fwd(*args, **kwargs)
        return self._end_middle(i, self.call, self.cached_outs, fwd, args, kwargs, ins)

    def _end_middle(self, i: int, call: MiddleCall, cached: Optional[list[torch.Tensor]], fwd: Callable,
                    args: tuple, kwargs: dict, ins: list[torch.Tensor]) -> Any:
        """The last block of a middle. As on the graph path, the middle ends where the next
        block begins (glue in between belongs to it): its streams are replaced or measured at
        the next block's call. At the end of the loop, this block's output is the exit."""
        if i + 1 < len(self.loop.blocks):
            self.pending = (call, cached)
            return self._build(i, ins) if cached is not None else fwd(*args, **kwargs)
        if cached is not None:
            return self._build(i, cached)
        out = fwd(*args, **kwargs)
        flat = _flat(out)[0]
        call.computed([flat[p] for p in self.loop.blocks[i].stream_outputs], [])
        return out

    def _exit_middle(self, i: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        (call, cached), self.pending = self.pending, None
        b = self.loop.blocks[i]
        bound = b.signature.bind(*args, **kwargs)
        if cached is None:  # computed: the residual is measured here
            call.computed([bound.arguments[q] for q in b.stream_params], [])
            return args, kwargs
        for q, t in zip(b.stream_params, cached):  # cached: this block starts from entry + residual
            bound.arguments[q] = t
        return bound.args, bound.kwargs


def plan_block_loops(loops: list[BlockListLoop], session: Any) -> tuple[list[LoopPlan], list[str]]:
    cplan = plan(loops, [session.config_for(k) for k in range(len(loops))])
    return cplan.loops, cplan.skipped
