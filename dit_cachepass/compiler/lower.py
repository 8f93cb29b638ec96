"""Lower: compile each piece with the chosen backend, on its first call.

Pieces are compiled lazily with the real tensors of the first call, so no extra forward
runs at compile time; after that a piece is a plain callable and the host-side branch
between pieces costs no recompile.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch
import torch.fx as fx

from .outline import layout_strides

if TYPE_CHECKING:
    from .outline import RegionCache

BACKENDS = ("inductor", "aot_eager", "eager")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LOWERINGS = ("full", "regional")


@dataclass(frozen=True)
class CompileOptions:
    """torch.compile's knobs, applied to every piece the pass compiles.

    ``mode`` and ``options`` (Inductor config patches, e.g. ``{"max_autotune": True}`` or
    ``{"triton.cudagraphs": True}``) reach Inductor for every piece, as ``torch.compile(mode=,
    options=)`` would for the whole model; ``options`` wins over ``mode`` where both set a key.
    ``dynamic``: None (static first, automatic dynamic from a module's second input shape),
    True (symbolic sizes from the start), False (static always: one recompile per shape).
    ``fullgraph=True``: a graph break raises instead of splitting the forward.
    ``lowering``: "full" (each piece compiled whole) or "regional" (each piece as calls to one
    compiled graph per block structure, see ``outline``)."""

    mode: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    dynamic: Optional[bool] = None
    fullgraph: bool = False
    lowering: str = "full"
    _patches: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is invalid: expected one of {', '.join(MODES)} (or None).")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"options must be a dict of Inductor settings, got {type(self.options).__name__}")
        known = torch._inductor.config.get_config_copy()
        unknown = sorted(k for k in self.options if k not in known)
        if unknown:
            import difflib

            hints = {k: difflib.get_close_matches(k, list(known), n=1) for k in unknown}
            hint = "; ".join(f"{k!r}: did you mean {h[0]!r}?" for k, h in hints.items() if h)
            raise ValueError(f"unknown Inductor option(s) {unknown}: options are torch._inductor.config "
                             f"settings, as torch.compile(options=...) takes them{'; ' + hint if hint else ''}")
        if self.dynamic not in (None, True, False):
            raise TypeError(f"dynamic={self.dynamic!r} is invalid: expected None, True or False")
        if not isinstance(self.fullgraph, bool):
            raise TypeError(f"fullgraph={self.fullgraph!r} is invalid: expected a bool")
        if self.lowering not in LOWERINGS:
            raise ValueError(f"lowering={self.lowering!r} is invalid: expected 'full' or 'regional'.")
        # derived once: ``cudagraphs`` is read by every middle call
        patches = dict(torch._inductor.list_mode_options(self.mode, self.dynamic)) if self.mode else {}
        patches.update(self.options)
        object.__setattr__(self, "_patches", patches)

    def inductor_patches(self) -> dict[str, Any]:
        """The Inductor config patches of ``mode`` and ``options``, as torch.compile derives them."""
        return dict(self._patches)

    @property
    def cudagraphs(self) -> bool:
        return bool(self._patches.get("triton.cudagraphs", False))


def warn_if_unverified(opts: "CompileOptions", cache_type: str, calibrated: bool) -> None:
    """CUDA graphs were verified on a GPU (an H200, 2026-11-30: tests/test_gpu.py and
    benchmarks/RESULTS.md) for DBCache/FBCache without a calibrator under full lowering: a
    replay overwrites the pool, and the cached residuals live outside it. DBPrune and the
    calibrators keep other tensors (block inputs, Taylor factors), copied the same way, and
    regional lowering replays one graph per block; none of these has run on a GPU yet."""
    if not opts.cudagraphs:
        return
    what = []
    if cache_type == "DBPrune":
        what.append("DBPrune")
    elif calibrated:
        what.append("a calibrator (TaylorSeer / FoCa)")
    if opts.lowering == "regional":
        what.append("lowering='regional'")
    if not what:
        return
    warnings.warn(f"dit_cachepass: CUDA graphs (mode='reduce-overhead' / 'max-autotune' or triton.cudagraphs) "
                  f"with {' and '.join(what)} have not been verified on a GPU yet (DBCache without a calibrator, "
                  "lowering='full', has been): what the cache keeps is copied out of the graph pool, but please "
                  "compare outputs against mode='default' once", stacklevel=4)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is invalid: expected one of {', '.join(BACKENDS)}.")
    return backend


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], backend: str,
                  opts: Optional[CompileOptions] = None) -> Callable:
    """Compiled inside a tracing context whose fake mode has a ``ShapeEnv``, as dynamo compiles
    its graphs: without one, Inductor bypasses its FX graph cache ("No shape env"), and every
    process would compile every piece from scratch."""
    if backend == "eager":
        return gm.forward
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    # static fakes of the real inputs: the piece is specialized to this call's sizes and strides
    inputs = [fake_mode.from_tensor(a, static_shapes=True) if isinstance(a, torch.Tensor) else a
              for a in example_inputs]
    with tracing(TracingContext(fake_mode)):
        return compile_whole(gm, inputs, backend, opts)


def compile_whole(gm: fx.GraphModule, example_inputs: Sequence[Any], backend: str,
                  opts: Optional[CompileOptions] = None) -> Callable:
    """``gm`` compiled as ``torch.compile(backend=, options=)`` would, in the tracing context
    already active. For a dynamo graph the pass leaves whole (nothing to cache, or a stage
    failed) that is dynamo's own, whose ShapeEnv knows the graph's unbacked sizes (``u0`` from a
    ``bincount`` under scalar capture); a fresh one (``compile_graph``) cannot re-trace them
    ("possible memo disaster")."""
    if backend == "eager":
        return gm.forward
    if backend == "aot_eager":
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)
    from torch._inductor.compile_fx import compile_fx

    patches = opts.inductor_patches() if opts is not None else {}
    return compile_fx(gm, example_inputs, config_patches=patches or None)


def _signature(args: Sequence[Any], watch: Sequence[int], key: bool = False) -> tuple:
    """Inductor specializes on strides too (and asserts them on entry): a piece fed once by a
    computed middle and once by a cached residual apply may see the same shape laid out
    differently (e.g. a view out of an all-to-all under context parallelism). Only the
    ``watch``ed positions are read: the rest (parameters, static graph inputs) are guarded by
    dynamo before the runner is ever called, so reading them on every call would be wasted
    work that grows with the model. ``key``: the key of a compiled variant, strides of size-1
    dims left out (``layout_strides``); the common call compares the raw signature with the
    last call's and builds the key only when they differ."""
    sig = []
    for k in watch:
        a = args[k]
        if isinstance(a, torch.Tensor):
            sig.append((a.shape, layout_strides(a.shape, a.stride()) if key else a.stride(), a.dtype, a.device))
        else:
            sig.append(a)
    return tuple(sig)


def guarded_by_dynamo(node: fx.Node) -> bool:
    """A placeholder whose fake value has static sizes and strides: dynamo's tensor guards
    check exactly those (and dtype, device) before the graph runs, so the runner need not."""
    v = node.meta.get("example_value")
    if not isinstance(v, torch.Tensor):
        return False
    return not any(isinstance(d, torch.SymInt) for d in (*v.shape, *v.stride()))


def _without_fake_meta(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of the piece without dynamo's fake values: they belong to dynamo's ShapeEnv
    (symbolic sizes under dynamic=True) and must not leak into Inductor's own trace."""
    gm = fx.GraphModule(gm, gm.graph.__deepcopy__())
    for node in gm.graph.nodes:
        node.meta.pop("example_value", None)
        node.meta.pop("val", None)
    return gm


def _item_only_inputs(gm: fx.GraphModule) -> tuple[int, ...]:
    """Placeholders read only through ``.item()``: under ``torch.compile(dynamic=True)`` dynamo
    passes a Python float such as a LayerNorm's eps as a 0-d tensor. A piece compiled on its own
    cannot trace the data-dependent float (``GuardOnDataDependentSymNode``), so the value of the
    call is baked in and kept in the piece's signature (a new value compiles a new variant)."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return tuple(k for k, n in enumerate(phs) if n.users and all(
        u.op == "call_method" and u.target == "item" for u in n.users)
        and isinstance(n.meta.get("example_value"), torch.Tensor) and n.meta["example_value"].dim() == 0)


def _specialize_scalars(gm: fx.GraphModule, scalars: Sequence[int], args: Sequence[Any]) -> fx.GraphModule:
    """``gm`` (a private copy) with each ``.item()`` of a ``scalars`` input replaced by its value."""
    if not scalars:
        return gm
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for k in scalars:
        value = args[k].item()
        for item in list(phs[k].users):
            for user in list(item.users):
                user.replace_input_with(item, value)
            gm.graph.erase_node(item)
    gm.recompile()
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
                  on_fail: Optional[Callable[[Exception], None]] = None,
                  watch: Optional[Sequence[int]] = None, opts: Optional[CompileOptions] = None,
                  regions: Optional["RegionCache"] = None) -> Callable:
    """Every piece is compiled lazily, once per input shape-and-stride signature, with the real
    tensors of its first call at that signature (``LazyCompiled``), also the pieces of a graph
    captured with dynamic shapes (``symbolic``): their fake metadata belongs to the parent
    capture's ShapeEnv and is dropped (``_without_fake_meta``), and their SymInt inputs arrive
    as plain ints, part of the signature. (A nested ``torch.compile`` is not used: called from
    inside the parent's compiled graph it never compiled, and it would have its own recompile
    limit.) ``watch``: the argument positions whose layout may change between calls (None: all).
    ``regions``: regional lowering, the compiled block graphs shared by every piece of a runner.
    """
    return LazyCompiled(gm, backend, on_fail, watch, opts, regions)


def region_cache(backend: str, opts: Optional[CompileOptions],
                 on_fail: Optional[Callable[[Exception], None]] = None) -> Optional["RegionCache"]:
    """The shared compiled regions of one runner under ``lowering="regional"``, else None."""
    if backend == "eager" or opts is None or opts.lowering != "regional":
        return None
    from .outline import RegionCache

    return RegionCache(lambda gm, args: _compile_or_eager(gm, args, backend, opts, on_fail))


def _compile_or_eager(gm: fx.GraphModule, args: Sequence[Any], backend: str, opts: Optional[CompileOptions],
                      on_fail: Optional[Callable[[Exception], None]], scalars: Sequence[int] = ()) -> Callable:
    """A backend that cannot compile a graph leaves it uncompiled (eager), with a warning through
    ``on_fail`` (which raises in strict mode); the cache still works."""
    try:
        return compile_graph(_specialize_scalars(_without_fake_meta(gm), scalars, args), args, backend, opts)
    except Exception as err:  # noqa: BLE001
        if on_fail is None:
            raise
        on_fail(err)
        return gm.forward


class LazyCompiled:
    """A piece compiled on first use, once per input shape-and-stride signature (a graph captured with
    dynamic shapes serves several shapes; a statically compiled piece serves one).
    ``__call__(*args)`` returns the piece's output tuple. Only the ``watch``ed arguments make up
    the signature (activations between pieces, symbolic graph inputs); with none to watch, the
    piece compiles once and a call is one Python call."""

    __slots__ = ("gm", "backend", "fns", "last_sig", "last_fn", "on_fail", "watch", "opts", "scalars", "regions")

    def __init__(self, gm: fx.GraphModule, backend: str, on_fail: Optional[Callable[[Exception], None]] = None,
                 watch: Optional[Sequence[int]] = None, opts: Optional[CompileOptions] = None,
                 regions: Optional["RegionCache"] = None):
        self.gm, self.backend, self.on_fail, self.opts, self.regions = gm, backend, on_fail, opts, regions
        n = sum(1 for node in gm.graph.nodes if node.op == "placeholder")
        self.watch = tuple(range(n)) if watch is None else tuple(watch)
        self.scalars = _item_only_inputs(gm)
        self.fns: dict[tuple, Callable] = {}
        self.last_sig: Optional[tuple] = None
        self.last_fn: Optional[Callable] = None

    def __call__(self, *args: Any) -> Any:
        if self.backend == "eager":
            return self.gm(*args)
        sig = _signature(args, self.watch)
        if self.scalars:  # their values are baked into the compiled piece
            sig += tuple(args[k].item() for k in self.scalars)
        if sig != self.last_sig:  # the common case: same layout as the last call
            key = _signature(args, self.watch, key=True) + sig[len(self.watch):]
            fn = self.fns.get(key)
            if fn is None:
                fn = self.fns[key] = self._compile(args)
            self.last_sig, self.last_fn = sig, fn
        return self.last_fn(*args)

    def _compile(self, args: Sequence[Any]) -> Callable:
        if self.regions is not None and not self.scalars:
            from .outline import outline

            on_cpu = all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor))
            outer = outline(self.gm, self.regions, compile_glue=not on_cpu)
            if outer is not None:  # regions compile on their first call, i.e. now
                return outer.forward
        return _compile_or_eager(self.gm, args, self.backend, self.opts, self.on_fail, self.scalars)
