"""Which path serves a compiled module, chosen on its first calls.

1. The graph path: dynamo captures the forward, the pass splits the graph (one compiled
   graph, zero recompiles). Most models stop here.
2. If the loop is broken across graphs (graph breaks), the capture is retried once with
   dynamo's ``capture_scalar_outputs`` / ``capture_dynamic_output_shape_ops`` switched on for
   this module's calls only (``.item()``, ``nonzero`` stay in the graph).
3. If still nothing is cached and the module has a top-level block list, the block path
   (``blockpath``): one eager call traced with hooks finds the lists and streams, then each
   block is wrapped and compiled regionally, with the same runtime and state.

The probes run within the first call (its inputs are run again on each next path), so the
first call is the chosen path's first step: the first generation equals the next identical
one. ``explain()`` reports the path a model takes and why.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch._dynamo.comptime import comptime
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from . import blockpath
from ..errors import StageError
from ..compiler.lower import CompileOptions, check_backend
from ..compiler.matcher import NO_BLOCK_LIST
from .session import GraphReport, Session

CAPTURE_FLAGS = dict(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=True)
PATHS = ("auto", "graph", "block")
NESTED_FIX = ("call the dcp.compile'd module directly, or use torch.compile(m, backend='dit_cache') "
              "instead of nesting")
NESTED = ("a dcp.compile'd module is being traced by an outer torch.compile (torch.compile over dcp.compile): "
          "the outer compile traces its plain forward, so nothing is cached (every step is computed, the "
          f"outputs stay exact); {NESTED_FIX}")
# dynamo's compile lock (re-entrant): held by every dynamo compile of any thread
_DYNAMO_LOCK = getattr(torch._dynamo.convert_frame, "compile_lock", None) or threading.RLock()


# nested_key(session) -> session, for warn_nested: a comptime function takes no arguments and
# reads the key (a constant string) from the traced frame's locals
_NESTED_SESSIONS: "weakref.WeakValueDictionary[str, Session]" = weakref.WeakValueDictionary()


def nested_key(module: Any, session: Session) -> str:
    """A constant string naming ``module``'s session. ``CachedForward`` reads it while an outer
    torch.compile traces it: dynamo guards on the value, so every compiled module is traced
    (and warned about) on its own, even where the outer compile would reuse another module's
    code (same class, parameters as graph inputs)."""
    key = f"{type(module).__name__}@{id(session):x}"
    _NESTED_SESSIONS[key] = session
    return key


def warn_nested(ctx: Any = None) -> None:
    """Run by ``comptime`` while an outer torch.compile traces a compiled module's forward:
    at compile time, without a graph break (``fullgraph=True`` keeps working). Once per
    module (its session's ``warn_once``, shown even when another module showed the same text:
    Python's default filter would show it once per process, and a second nested module would
    run uncached without a word)."""
    key = None
    try:
        key = ctx.get_local("nested_key").as_python_constant()
    except Exception:  # noqa: BLE001 - an older/newer comptime API: warn without the module
        pass
    session = _NESTED_SESSIONS.get(key) if isinstance(key, str) else None
    if session is None:
        warnings.warn(f"dit_cachepass: {NESTED}", stacklevel=2)
        return
    name = key.rsplit("@", 1)[0]
    session.warn_once(NESTED.replace("a dcp.compile'd module", f"a dcp.compile'd {name}", 1), key="nested",
                      distinct=True)


def traced_by_outer_compile() -> bool:
    """Is this thread tracing the call in progress (an outer ``torch.compile``, ``torch.export``,
    ``make_fx``)? Thread-safe: ``torch.compiler.is_compiling()`` alone reads a process-global flag
    that torch sets for the whole of *any* thread's compile, so a second thread's plain calls
    would be taken for nested ones (and run uncached) while another module compiles.

    Under dynamo, ``is_dynamo_compiling()`` is a constant True (the rest is never traced); in
    eager code the global flag counts only when this thread has a tracing mode of its own
    (export's and AOTAutograd's make_fx: thread-local dispatch modes)."""
    if torch.compiler.is_dynamo_compiling():
        return True
    if not torch.compiler.is_compiling():
        return False
    return torch._C._len_torch_dispatch_stack() > 0 or get_proxy_mode() is not None


@functools.lru_cache(maxsize=None)
def _dynamo_config_is_thread_local() -> bool:
    """Are ``torch._dynamo.config.patch`` settings per thread (torch >= 2.10 or so), or
    process-global (older torch)? Probed once: a fresh thread reads a setting patched here."""
    cfg, key = torch._dynamo.config, "capture_scalar_outputs"
    with _DYNAMO_LOCK:
        value = getattr(cfg, key)
        seen: list = []
        with cfg.patch(**{key: not value}):
            t = threading.Thread(target=lambda: seen.append(getattr(cfg, key)))
            t.start()
            t.join()
    return seen == [value]


def dynamo_patch(patches: dict) -> Any:
    """``torch._dynamo.config.patch(**patches)`` for one call of one module, invisible to other
    threads. Where torch keeps the patch per thread, the patch alone; where dynamo's config is
    process-global (older torch), the patch is held under dynamo's own compile lock, so that no
    other thread compiles while it is in effect (nor enters and leaves an overlapping patch,
    which would restore the wrong values). Other threads' compiled calls keep running."""
    if not patches:
        return contextlib.nullcontext()
    if _dynamo_config_is_thread_local():
        return torch._dynamo.config.patch(**patches)
    stack = contextlib.ExitStack()
    stack.enter_context(_DYNAMO_LOCK)
    stack.enter_context(torch._dynamo.config.patch(**patches))
    return stack


def check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path={path!r} is invalid: expected one of {', '.join(PATHS)}.")
    return path


def graph_broken(graphs: list[GraphReport]) -> bool:
    """Nothing cached because dynamo split the forward (or lost blocks to a break)?"""
    return not any(g.loops for g in graphs) and (len(graphs) > 1 or any(
        "only blocks" in r or "graph break" in r for g in graphs for r in g.reasons))


def block_path_may_help(module: nn.Module, graphs: list[GraphReport]) -> bool:
    """Nothing cached, a top-level block list exists, and the graph path did not simply find
    a loop too short for the config (the block path would plan the same)."""
    if any(g.loops for g in graphs) or not blockpath.top_level_lists(module):
        return False
    reasons = graphs[0].reasons if len(graphs) == 1 else []
    if any("change the stream's shape" in r for r in reasons) and all(
            r == NO_BLOCK_LIST or "not transformer blocks" in r for r in reasons):
        return False  # one whole graph whose lists are no transformer block lists (a UNet's stages)
    return not (graphs and all(g.skipped and not g.reasons for g in graphs))


def block_path_report(module: nn.Module, session: Session, calls: list[blockpath.BlockCall]) -> GraphReport:
    """Match and plan the block lists of one traced eager call."""
    loops, reasons, notes = blockpath.match_block_calls(module, calls, session.config.loop_layout)
    plans, skipped = blockpath.plan_block_loops(loops, session)
    return GraphReport(len(calls), plans, reasons, notes, skipped)


def regional_compiler(backend: str, opts: Optional[CompileOptions] = None) -> Callable[[nn.Module], Callable]:
    """Compile a block's forward once per block class (dynamo caches per code object and
    takes parameters as inputs), as diffusers' ``compile_repeated_blocks`` does. Automatic
    dynamic shapes: a second resolution recompiles once with dynamic sizes instead of once
    per resolution (dynamo's recompile limit is shared by every block of the class)."""
    check_backend(backend)

    def compile_block(block: nn.Module) -> Callable:
        fwd = block.__dict__.get("forward") or type(block).forward.__get__(block)
        if backend == "eager":
            return fwd
        patches = opts.inductor_patches() if opts is not None and backend == "inductor" else {}
        dynamic = opts.dynamic if opts is not None else None
        return torch.compile(fwd, backend=backend, dynamic=dynamic, options=patches or None)
    return compile_block


class _InstalledBlockForward:
    """A block forward installed by the block path, as an object: a copy or a pickle of the
    block gets the block's own forward back (``getattr(block, "forward")`` on the copy), never
    this module's wrapper (which would run the original blocks' runtime)."""

    __slots__ = ("fn", "block")

    def __init__(self, fn: Callable, block: nn.Module):
        self.fn, self.block = fn, block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return (getattr, (self.block, "forward"))


class ModulePaths:
    """The callable behind a compiled module's forward: graph path, then the fallbacks.

    The graph path compiles a private code object of the forward (``make_forward``) with static
    sizes; when a second input shape arrives, a fresh private copy is compiled with dynamo's
    automatic dynamic shapes (at most one more recompile makes the changing sizes symbolic), and
    that graph serves every later resolution (its pieces are compiled per shape by
    ``lower.LazyCompiled``, which has no recompile limit).
    If dynamo still reaches its recompile limit (``torch._dynamo.config.recompile_limit``,
    e.g. many dtypes or other guards), it runs the forward eagerly: no cached graph runs, and
    a warning says so once (``graph_runs`` counts the calls of cached graphs).
    """

    def __init__(self, module: nn.Module, session: Session, make_forward: Callable[[], Callable],
                 path: str = "auto"):
        self.module, self.session = module, session
        self.make_forward = make_forward
        self.path = check_path(path)
        self.stage = "block-pending" if path == "block" else "graph"
        self.graph_runs = 0  # calls of a cached graph (a Runner): none in a call = dynamo ran it eagerly
        self.eager = make_forward()
        # static until a second input shape is seen, then a fresh capture with dynamo's automatic
        # dynamic shapes (the dims that change become symbolic, floats stay constants). Not automatic
        # from the start: its profile is keyed by the forward's file and line, so one model's
        # resolutions would make every later model of the class start symbolic
        self.dynamic: Optional[bool] = session.compile_options.dynamic is True
        self.first_shapes: Optional[tuple] = None
        self.compiled = self.compile_graph_path(make_forward()) if self.stage == "graph" else None
        self.runner: Optional[blockpath.BlockRunner] = None
        self.decided = path != "auto"

    def compile_graph_path(self, fn: Callable) -> Callable:
        me = weakref.ref(self)  # dynamo keeps the backend in its code cache: no strong cycle to the module

        def backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
            return me()._build(gm, example_inputs)
        return torch.compile(fn, backend=backend, dynamic=self.dynamic,
                             fullgraph=self.session.compile_options.fullgraph)

    def _build(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
        """The dynamo backend of this module: the pass (``backend.build``) with this session;
        a cached graph's calls are counted."""
        from ..backend import build
        from .executor import Runner

        fn = build(gm, example_inputs, self.session)
        if not isinstance(fn, Runner):
            return fn

        fn.weaken()  # the module owns its session; dynamo's cache must not keep it alive
        me = weakref.ref(self)

        def run(*args: Any) -> Any:
            me().graph_runs += 1
            return fn(*args)
        return run

    @property
    def patches(self) -> dict:
        """Dynamo settings for this module's calls only. dynamic=True would also make Python
        floats (a LayerNorm's eps) symbolic 0-d tensor inputs read with ``.item()``, which a
        piece compiled on its own cannot trace: floats stay specialized (guarded by value)."""
        p = dict(CAPTURE_FLAGS) if self.stage == "flags" else {}
        if self.session.compile_options.dynamic is True:
            p["specialize_float"] = True
        return p

    @property
    def name(self) -> str:
        return {"graph": "graph", "flags": "graph (scalar/dynamic-output capture)",
                "block-pending": "block", "block": "block"}[self.stage]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Serves one call. While the path is being chosen, the same call is run again on each
        next path (capture flags, block trace, block runner), so the first call is served by
        the path that stays: it is the generation's first computed step there, and the first
        generation decides exactly like the next identical one."""
        while True:
            stage = self.stage
            out = self._serve(args, kwargs)
            if self.stage in (stage, "graph"):  # decided (or back to the uncached graph)
                return out

    def _serve(self, args: tuple, kwargs: dict) -> Any:
        if self.stage == "block":
            self.runner.begin_call()
            return self.eager(*args, **kwargs)
        if self.stage == "block-pending":
            return self._trace_blocks(args, kwargs)
        if self.dynamic is False and self.session.compile_options.dynamic is None:  # until the switch, per call
            shapes = tuple(tuple(v.shape) for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
            if self.first_shapes is None:
                self.first_shapes = shapes
            elif shapes != self.first_shapes:
                self.dynamic = None  # a second resolution: automatic dynamic from now on
                self.compiled = self.compile_graph_path(self.make_forward())
        runs = self.graph_runs
        with dynamo_patch(self.patches):  # this thread's calls only (see dynamo_patch)
            out = self.compiled(*args, **kwargs)
        if not self.decided:
            self._next_path()
        elif self.graph_runs == runs and any(g.loops for g in self.session.graphs):
            self._ran_eagerly(args, kwargs)
        return out

    @staticmethod
    def nested_call(forward: Callable, args: tuple, kwargs: dict, nested_key: Optional[str] = None) -> Any:
        """A call traced by an outer torch.compile (``traced_by_outer_compile()``): dynamo
        would inline this module's own compiled forward and ignore its backend, so no cached
        graph could run and the call would look like a recompile-limit fallback. Instead the
        plain ``forward`` is traced (exact, never stale) and ``NESTED`` warns at compile time,
        once per module (``nested_key``: see ``nested_key()``)."""
        comptime(warn_nested)
        return forward(*args, **kwargs)

    def _ran_eagerly(self, args: tuple, kwargs: dict) -> None:
        """A cached module whose call ran no cached graph: dynamo gave up on this call (a call
        traced by an outer torch.compile never gets here: ``CachedForward`` warns ``NESTED``)."""
        shapes = [tuple(v.shape) for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor)]
        limit = torch._dynamo.config.recompile_limit
        self.session.warn_once(
            key="recompile-limit",
            msg=f"a call with input shapes {shapes} ran uncached (and uncompiled): dynamo ran the forward "
                f"eagerly, most likely because it reached torch._dynamo.config.recompile_limit ({limit}) "
                "recompiles of this module's forward (or compilation is disabled). Such calls compute every "
                "step; raise torch._dynamo.config.recompile_limit, or dcp.compile the module again")

    def _next_path(self) -> None:
        s = self.session
        if any(g.loops for g in s.graphs):
            self.decided = True
            return
        if self.stage == "graph" and graph_broken(s.graphs):
            self.stage = "flags"
            self.compiled = self.compile_graph_path(self.make_forward())  # a fresh code object: a fresh capture
        elif block_path_may_help(self.module, s.graphs):
            self.stage = "block-pending"
        else:
            self.decided = True  # uncached; after_forward says why
            return
        s.notes.append(f"nothing cached on the {self._previous()} path; trying the {self.name} path")
        s.graphs, s.runners = [], []
        s.checked_first_forward = True  # not uncached yet: the next path decides

    def _previous(self) -> str:
        return "graph" if self.stage == "flags" else "graph (capture flags)"

    def _trace_blocks(self, args: tuple, kwargs: dict) -> Any:
        s = self.session
        self.decided = True
        out, calls = blockpath.trace_block_calls(self.module, lambda: self.eager(*args, **kwargs))
        try:
            report = block_path_report(self.module, s, calls)
        except Exception as err:  # noqa: BLE001 - never crash: later calls run uncached

            s.stage_failed(StageError("block-path match", err))
            self._back_to_graph()
            return out
        s.graphs.append(report)
        plans = report.loops
        if not plans:
            self._back_to_graph()
            s.checked_first_forward = False  # after_forward warns with the reasons
            return out
        self.runner = blockpath.BlockRunner(s, plans, regional_compiler(s.backend, s.compile_options))
        for rt in self.runner.runtimes:  # copies / pickles of a block get its own forward back
            for block, _prior in rt.saved:
                fn = block.__dict__.get("forward")
                if fn is not None and not isinstance(fn, _InstalledBlockForward):
                    block.__dict__["forward"] = _InstalledBlockForward(fn, block)
        self.stage = "block"
        for lp in plans:
            if lp.loop.never_cache:
                s.warn(f"loop {lp.name} always computes: {lp.loop.never_cache}")
        return out

    def _back_to_graph(self) -> None:
        """Nothing to cache: run compiled (uncached) from now on."""
        self.stage = "graph"
        self.compiled = self.compile_graph_path(self.make_forward())

    def uninstall(self) -> None:
        if self.runner is not None:
            self.runner.uninstall()

