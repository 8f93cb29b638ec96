"""Lower: compile each piece with the chosen backend, on its first call.

Pieces are compiled lazily with the real tensors of the first call, so no extra forward
runs at compile time; after that a piece is a plain callable and the host-side branch
between pieces costs no recompile.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

BACKENDS = ("inductor", "aot_eager", "eager")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is invalid: expected one of {', '.join(BACKENDS)}.")
    return backend


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], backend: str) -> Callable:
    if backend == "eager":
        return gm.forward
    if backend == "aot_eager":
        return torch._dynamo.lookup_backend("aot_eager")(gm, list(example_inputs))
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, list(example_inputs))


def _signature(args: Sequence[Any]) -> tuple:
    """Inductor specializes on strides too (and asserts them on entry): a piece fed once by a
    computed middle and once by a cached residual apply may see the same shape laid out
    differently (e.g. a view out of an all-to-all under context parallelism)."""
    return tuple((tuple(a.shape), a.stride(), a.dtype, a.device) if isinstance(a, torch.Tensor) else a
                 for a in args)


def _without_fake_meta(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of the piece without dynamo's fake values: they belong to dynamo's ShapeEnv
    (symbolic sizes under dynamic=True) and must not leak into Inductor's own trace."""
    gm = fx.GraphModule(gm, gm.graph.__deepcopy__())
    for node in gm.graph.nodes:
        node.meta.pop("example_value", None)
        node.meta.pop("val", None)
    return gm


def has_symbolic_inputs(gm: fx.GraphModule) -> bool:
    """Was the graph captured with dynamic shapes (SymInt inputs or symbolic tensor sizes)?"""
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        v = node.meta.get("example_value")
        if isinstance(v, torch.SymInt) or (isinstance(v, torch.Tensor) and any(
                isinstance(d, torch.SymInt) for d in v.shape)):
            return True
    return False


def compile_piece(gm: fx.GraphModule, backend: str, symbolic: bool,
                  on_fail: Optional[Callable[[Exception], None]] = None) -> Callable:
    """Every piece is compiled lazily, once per input shape-and-stride signature, with the real
    tensors of its first call at that signature (``LazyCompiled``), also the pieces of a graph
    captured with dynamic shapes (``symbolic``): their fake metadata belongs to the parent
    capture's ShapeEnv and is dropped (``_without_fake_meta``), and their SymInt inputs arrive
    as plain ints, part of the signature. (A nested ``torch.compile`` is not used: called from
    inside the parent's compiled graph it never compiled, and it would have its own recompile
    limit.)"""
    return LazyCompiled(gm, backend, on_fail)


class LazyCompiled:
    """A piece compiled on first use, once per input shape-and-stride signature (a graph captured with
    dynamic shapes serves several shapes; a statically compiled piece serves one).
    ``__call__(*args)`` returns the piece's output tuple."""

    __slots__ = ("gm", "backend", "fns", "last", "on_fail")

    def __init__(self, gm: fx.GraphModule, backend: str, on_fail: Optional[Callable[[Exception], None]] = None):
        self.gm, self.backend, self.on_fail = gm, backend, on_fail
        self.fns: dict[tuple, Callable] = {}
        self.last: Optional[tuple[tuple, Callable]] = None

    def __call__(self, *args: Any) -> Any:
        if self.backend == "eager":
            return self.gm(*args)
        sig = _signature(args)
        if self.last is None or self.last[0] != sig:  # the common case: same shapes as last call
            fn = self.fns.get(sig)
            if fn is None:
                fn = self.fns[sig] = self._compile(args)
            self.last = (sig, fn)
        return self.last[1](*args)

    def _compile(self, args: Sequence[Any]) -> Callable:
        """A backend that cannot compile a piece leaves that piece uncompiled (eager), with a
        warning through ``on_fail`` (which raises in strict mode); the cache still works."""
        try:
            return compile_graph(_without_fake_meta(self.gm), args, self.backend)
        except Exception as err:  # noqa: BLE001
            if self.on_fail is None:
                raise
            self.on_fail(err)
            return self.gm.forward
