"""Front door: ``compile`` / ``enable_cache``, ``disable``, ``refresh``, ``summary``, ``explain``."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Optional, Union

import torch

from .backend import register, session_for_options, session_of
from .compiler.capture import _isolated_forward, _list_lengths
from .config import CalibratorConfig, DBCacheConfig, ParallelismConfig, ParamsModifier
from .compiler.lower import CompileOptions
from .runtime.paths import ModulePaths, nested_key, traced_by_outer_compile
from .runtime import wholecall
from .runtime.parallel import decision_group, enable_parallelism
from .runtime.session import _ATTR, Session, UnsupportedModelError
from .stats import Summary

_PIPE_BASE = "_dit_cachepass_base"  # on the per-instance pipeline subclass: the original class




def compile(module: torch.nn.Module, cache_config: Optional[DBCacheConfig] = None, *,
            calibrator_config: Optional[CalibratorConfig] = None,
            params_modifiers: Union[ParamsModifier, list[ParamsModifier], None] = None,
            backend: str = "inductor", strict: bool = False, process_group: Any = None,
            path: str = "auto", mode: Optional[str] = None, options: Optional[dict] = None,
            dynamic: Optional[bool] = None, fullgraph: bool = False, lowering: str = "full") -> torch.nn.Module:
    """Cache the block loops of ``module`` (a diffusers transformer) and compile it.

    Returns the same module object with its ``forward`` replaced, so a pipeline keeps using
    its ``.config``, ``.dtype``, hooks and attributes. Parameters are never modified.
    ``backend``: "inductor" (default), "aot_eager" or "eager" (debugging, fast CPU tests).
    ``strict=True`` raises instead of running uncached when no loop can be cached.
    ``path``: "auto" (the graph path; if graph breaks keep the loop out of every graph, a retry
    with dynamo's scalar capture, then the block path), "graph" or "block" to force one.
    ``calibrator_config``: ``TaylorSeerCalibratorConfig``, ``FoCaCalibratorConfig`` or
    ``DMDCalibratorConfig`` forecasts the middle's residual on cached steps instead of reusing
    it unchanged.
    ``params_modifiers[k]`` overrides the config of the k-th cached loop (graph order, as
    ``explain`` lists them); a single ``ParamsModifier`` applies to every loop.
    ``process_group``: when each rank holds a shard of the activations (context parallelism),
    the ranks' L1 sums are all-reduced so that every rank takes the same decision; pass the
    group, or ``True`` for the default group, or ``False`` to decide per rank. Left as ``None``,
    a model prepared with diffusers' ``enable_parallelism`` uses its context- (or tensor-)
    parallel mesh's group automatically.
    ``mode``, ``options``, ``dynamic``, ``fullgraph``: as ``torch.compile`` takes them; ``mode``
    and ``options`` (``torch._inductor.config`` settings) reach Inductor for every piece, and
    ``fullgraph=True`` raises on a graph break instead of splitting the forward (see
    ``lower.CompileOptions``).
    ``lowering``: "full" (default: each Fn / middle / Bn piece of the captured graph compiled
    whole, glue fused with it) or "regional" (each distinct block structure compiled once and
    shared by every block that has it, as diffusers' ``compile_repeated_blocks``; on the graph
    path long glue runs are compiled too on a GPU, on a CPU and on the block path
    (``path="block"``) glue runs eager). On the CPU benchmark regional compiled in 0.57x
    torch.compile's time (``path="block"``: 0.53x) at 0.84x its steady time; see
    benchmarks/RESULTS.md and docs/user_guide.md.
    """
    if not isinstance(module, torch.nn.Module):
        hint = (": a pipeline; pass its transformer (dcp.compile(pipe.transformer, config)) or cache every "
                "transformer of it with dcp.enable_cache(pipe, config)"
                if isinstance(getattr(module, "components", None), dict) else "")
        raise TypeError(f"dit_cachepass.compile expects an nn.Module, got {type(module).__name__}{hint}")
    if hasattr(module, _ATTR):
        disable(module)
    session = Session(cache_config, backend=backend, strict=strict, list_lengths=_list_lengths(module),
                      calibrator_config=calibrator_config, params_modifiers=params_modifiers,
                      process_group=decision_group(module, process_group),
                      compile_options=CompileOptions(mode=mode, options=dict(options or {}), dynamic=dynamic,
                                                     fullgraph=fullgraph, lowering=lowering))
    session.previous_forward = module.__dict__.get("forward")
    module.forward = CachedForward(module, session, path, start=True)
    _observe_cache_context(module, session)
    setattr(module, _ATTR, session)
    return module


def _layout(args: tuple, kwargs: dict) -> tuple:
    """Shape and dtype of every tensor argument (and of tensors in a list, tuple or dict one
    level down): what a call's cached state was computed from."""
    out: list = list(kwargs)
    for v in (*args, *kwargs.values()):
        if isinstance(v, dict):
            v = tuple(v.values())
        if isinstance(v, torch.Tensor):
            out.append((v.shape, v.dtype))
        elif isinstance(v, (list, tuple)):
            out.extend((t.shape, t.dtype) for t in v if isinstance(t, torch.Tensor))
        else:
            out.append(None)
    return tuple(out)


class CachedForward:
    """The forward ``dcp.compile`` installs on a module (``module.forward``).

    An object rather than a closure, so that copies and saves of the module work:
    ``copy.deepcopy`` and ``pickle`` / ``torch.save`` go through ``__reduce__``, which names
    only the module, its ``Session`` and the path. The copy's forward is bound to the copied
    module (deepcopy registers the new module in ``memo`` before copying its ``__dict__``), and
    the session copies as a fresh one with the same settings (``Session.__deepcopy__`` /
    ``__reduce__``): no compiled code, graph or cached tensor is copied or saved. The copy (or
    the loaded module) compiles itself on its first call, runs its own weights and keeps its
    own cache state. ``m.state_dict()`` is not affected by compiling (no parameter or buffer
    is added).
    """

    def __init__(self, module: torch.nn.Module, session: Session, path: str = "auto", start: bool = False):
        self.module, self.session, self.path = module, session, path
        self.timestep_of: Optional[Callable[[tuple, dict], Any]] = None
        self.nested_key = nested_key(module, session)  # names this module to an outer torch.compile
        if start:  # dcp.compile: set up now (a copy or a loaded module: on its first call)
            self._start()

    def _start(self) -> ModulePaths:
        module, session = self.module, self.session
        make = lambda: _isolated_forward(module, session.previous_forward)  # noqa: E731
        # the timestep is read from the arguments (a graph may not take it: Lumina2)
        self.timestep_of = _timestep_getter(make())
        session.paths = ModulePaths(module, session, make, self.path)
        return session.paths

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # traced by an outer torch.compile: warns, runs uncached. Not torch.compiler.is_compiling()
        # alone: torch sets it process-wide while any thread compiles (another module's first call)
        if traced_by_outer_compile():
            return ModulePaths.nested_call(self.__wrapped__, args, kwargs, self.nested_key)
        session = self.session
        compiled = session.paths if session.paths is not None else self._start()
        # one call of the module = one step of one branch, whatever graphs dynamo splits it into
        session.begin_call(self.timestep_of(args, kwargs), _layout(args, kwargs), (args, kwargs))
        try:
            try:
                out = (wholecall.serve(session, compiled, args, kwargs) if session.config.skip_whole_call
                       else compiled(*args, **kwargs))
            except torch._dynamo.exc.BackendCompilerFailed as e:  # strict=True: raise ours, not dynamo's wrapper
                inner = getattr(e, "inner_exception", None) or e.__cause__
                if isinstance(inner, UnsupportedModelError):
                    raise inner from None
                raise
        except BaseException:
            session.abort_call()  # a failed call leaves counters, branches and buffers as before it
            raise
        session.end_call()
        session.after_forward()
        return out

    def __reduce__(self) -> tuple:
        return (CachedForward, (self.module, self.session, self.path))

    # as functools.wraps gave the closure before: the forward's signature and name
    @property
    def __wrapped__(self) -> Callable:
        prior = self.session.previous_forward
        return prior if prior is not None else type(self.module).forward.__get__(self.module)

    @property
    def __name__(self) -> str:
        return getattr(self.__wrapped__, "__name__", "forward")

    def __repr__(self) -> str:
        return f"<dit_cachepass forward of {type(self.module).__name__} ({self.session!r})>"


def _timestep_getter(fn: Callable) -> Callable[[tuple, dict], Any]:
    """Reads the ``timestep`` (or ``timesteps``) argument of a forward call, if it has one."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.name in ("timestep", "timesteps", "t"):  # Z-Image names it t
            positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            idx = params.index(p) if positional and all(
                q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD) for q in params[:params.index(p)]) else None
            name = p.name

            def get(args: tuple, kwargs: dict) -> Any:
                if name in kwargs:
                    return kwargs[name]
                return args[idx] if idx is not None and idx < len(args) else None
            return get
    return lambda args, kwargs: kwargs.get("timestep", kwargs.get("timesteps"))


def _observe_cache_context(module: torch.nn.Module, session: Session) -> None:
    """diffusers pipelines wrap each denoiser call in ``transformer.cache_context("cond" |
    "uncond", step_index=...)``; an instance-level wrapper hands the name (and the step index
    when given) to the session, then enters the original context."""
    if not callable(getattr(module, "cache_context", None)):
        return
    session.previous_cache_context = module.__dict__.get("cache_context")
    module.cache_context = _CacheContext(module, session)


class _CacheContext:
    """``module.cache_context`` while cached: an object (not a closure), so that a copy or a
    pickle of the module gets one bound to the copy and its session (``__reduce__``)."""

    _dit_cachepass = True

    def __init__(self, module: torch.nn.Module, session: Session):
        self.module, self.session = module, session

    def __call__(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        return self._scope(name, args, kwargs)

    @contextlib.contextmanager
    def _scope(self, name: Any, args: tuple, kwargs: dict):
        original = self.session.previous_cache_context or type(self.module).cache_context.__get__(self.module)
        with original(name, *args, **kwargs), self.session.branch_scope(str(name), kwargs.get("step_index")):
            yield

    def __reduce__(self) -> tuple:
        return (_CacheContext, (self.module, self.session))


def enable_cache(pipe_or_module: Any, cache_config: Optional[DBCacheConfig] = None, *,
                 calibrator_config: Optional[CalibratorConfig] = None,
                 params_modifiers: Optional[list] = None, backend: str = "inductor",
                 strict: bool = False, parallelism_config: Optional[ParallelismConfig] = None,
                 **compile_options: Any) -> Any:
    """cache-dit's drop-in: cache every transformer of a diffusers pipeline (or one module).
    ``compile_options``: ``mode``, ``options``, ``dynamic``, ``fullgraph``, ``lowering``, ``path``
    as ``compile`` takes them, for every transformer.

    Each transformer (``transformer``, ``transformer_2`` ...) gets its own session and state.
    ``params_modifiers``: for one module, a list of ``ParamsModifier`` (one per loop); for a
    pipeline, one entry per transformer in component order, each a ``ParamsModifier`` (for all
    its loops) or a list of them (one per loop). Returns ``pipe_or_module``.
    ``parallelism_config``: a ``ParallelismConfig`` (or diffusers' own ``ContextParallelConfig``
    / ``TensorParallelConfig`` / ``ParallelConfig``) shards each transformer with diffusers'
    ``enable_parallelism`` first; the ranks then take every cache decision together.
    """
    if isinstance(pipe_or_module, torch.nn.Module):
        if parallelism_config is not None:
            enable_parallelism(pipe_or_module, parallelism_config)
        return compile(pipe_or_module, cache_config, calibrator_config=calibrator_config,
                       params_modifiers=params_modifiers, backend=backend, strict=strict, **compile_options)
    components = getattr(pipe_or_module, "components", None)
    if not isinstance(components, dict):
        raise TypeError("enable_cache expects a diffusers pipeline or an nn.Module, got "
                        f"{type(pipe_or_module).__name__}")
    names = [n for n, c in components.items() if n.startswith("transformer") and isinstance(c, torch.nn.Module)]
    if not names:
        raise ValueError(f"{type(pipe_or_module).__name__} has no transformer component to cache "
                         f"(components: {sorted(components)})")
    mods = list(params_modifiers or [])
    if len(mods) > len(names):
        raise ValueError(f"params_modifiers has {len(mods)} entries but the pipeline has {len(names)} "
                         f"transformer(s): {names}")
    for i, name in enumerate(names):
        mod = components[name]
        existing = getattr(mod, _ATTR, None)
        if (existing is not None and parallelism_config is None and (i >= len(mods) or mods[i] is None)
                and existing.params_modifiers is None and existing.backend == backend
                and existing.strict == strict and existing.calibrator_config == calibrator_config
                and not compile_options
                and (cache_config is None or cache_config == existing.config)):
            continue  # shared with a pipeline already cached (from_pipe / same components): keep its session
        if parallelism_config is not None:
            enable_parallelism(mod, parallelism_config)
        compile(mod, cache_config, calibrator_config=calibrator_config,
                params_modifiers=mods[i] if i < len(mods) else None, backend=backend, strict=strict,
                **compile_options)
    _wrap_pipeline(pipe_or_module)
    return pipe_or_module


def _cached_components(pipe: Any) -> dict[str, Session]:
    """The pipeline's cached transformers by component name, each session once (components
    shared under two names keep the first)."""
    comps = getattr(pipe, "components", None)
    comps = comps if isinstance(comps, dict) else {}
    out: dict[str, Session] = {}
    for name, c in comps.items():
        s = _find_session(c) if isinstance(c, torch.nn.Module) else None
        if s is not None and s not in out.values():
            out[name] = s
    return out


def _num_inference_steps(sig: Optional[inspect.Signature], self: Any, args: tuple, kwargs: dict) -> Optional[int]:
    n = kwargs.get("num_inference_steps")
    if n is None and sig is not None:
        try:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            n = bound.arguments.get("num_inference_steps")
        except TypeError:
            n = None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _wrap_pipeline(pipe: Any) -> None:
    """Every call of the pipeline is one generation of each cached transformer. Python looks
    ``__call__`` up on the type, so the instance gets its own subclass (same name, qualname and
    module: ``save_pretrained`` and ``from_pipe`` see the original class name);
    ``disable_cache`` puts the original class back."""
    cls = type(pipe)
    if getattr(cls, _PIPE_BASE, None) is not None or not any("__call__" in vars(k) for k in cls.__mro__[:-1]):
        return
    base_call = cls.__call__
    try:
        sig: Optional[inspect.Signature] = inspect.signature(base_call)
    except (TypeError, ValueError):
        sig = None

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        n = _num_inference_steps(sig, self, args, kwargs)
        with contextlib.ExitStack() as stack:
            for s in _cached_components(self).values():
                stack.enter_context(s.generation_scope(n))
            return base_call(self, *args, **kwargs)

    functools.update_wrapper(__call__, base_call)
    pipe.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                  "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                                                  _PIPE_BASE: cls})


def disable_cache(pipe_or_module: Any) -> Any:
    """Undo ``enable_cache``."""
    if isinstance(pipe_or_module, torch.nn.Module):
        return disable(pipe_or_module)
    for name, c in getattr(pipe_or_module, "components", {}).items():
        if isinstance(c, torch.nn.Module) and hasattr(c, _ATTR):
            disable(c)
    base = getattr(type(pipe_or_module), _PIPE_BASE, None)
    if base is not None:
        pipe_or_module.__class__ = base
    return pipe_or_module


@contextlib.contextmanager
def generation(module: Any, num_inference_steps: Optional[int] = None):
    """``with dcp.generation(transformer):`` every call inside is a step of one new generation
    (entering and leaving are boundaries), whatever the timesteps do. For transformer-only
    use; ``enable_cache(pipe)`` does this for every pipeline call. ``module``: a module from
    ``dcp.compile``/``enable_cache``/``torch.compile(backend="dit_cache")``, or a pipeline
    (every cached transformer)."""
    sessions = ([_session(module)] if isinstance(module, torch.nn.Module)
                else list(_cached_components(module).values()))
    if not sessions:
        raise ValueError(f"{type(module).__name__} has no module cached by dit_cachepass")
    with contextlib.ExitStack() as stack:
        for s in sessions:
            stack.enter_context(s.generation_scope(num_inference_steps))
        yield


@contextlib.contextmanager
def branch(module: Any, name: str, step_index: Optional[int] = None):
    """``with dcp.branch(transformer, "uncond"):`` calls inside belong to the named branch
    (own reference, residuals and counters), whatever their order or timestep. "cond" is the
    default branch. diffusers pipelines name their calls with ``cache_context`` already.
    ``module`` may be a pipeline with one cached transformer."""
    with _one_session(module).branch_scope(name, step_index):
        yield


def _dynamo_options(obj: Any) -> Optional[dict]:
    """The ``options`` of ``torch.compile(module, backend="dit_cache", options=...)``, or None
    when ``obj`` was not compiled with that backend."""
    wrapper = getattr(getattr(obj, "dynamo_ctx", None), "callback", None)
    while hasattr(wrapper, "_torchdynamo_orig_backend"):
        wrapper = wrapper._torchdynamo_orig_backend
    if getattr(wrapper, "compiler_name", None) != "dit_cache":
        return None
    return (getattr(wrapper, "kwargs", None) or {}).get("options") or {}


def _find_session(obj: Any) -> Optional[Session]:
    s = getattr(obj, _ATTR, None)
    if s is None and isinstance(getattr(obj, "_orig_mod", None), torch.nn.Module):
        mod = obj._orig_mod  # torch.compile(..., backend="dit_cache"): the session of the module itself
        s = getattr(mod, _ATTR, None) or session_of(mod)
        if s is None:
            options = _dynamo_options(obj)
            if options is not None:  # not called yet: create its session now, the backend will find it
                s = session_for_options(options)
                register(mod, s)
    return s


def _session(obj: Any) -> Session:
    s = _find_session(obj)
    if s is None:
        raise ValueError(f"{type(obj).__name__} is not compiled by dit_cachepass: call "
                         "dit_cachepass.compile(module, config) or torch.compile(module, backend='dit_cache').")
    return s


def _one_session(obj: Any) -> Session:
    """The session of a cached module, or of a pipeline's one cached transformer (as cache-dit's
    ``summary(pipe)`` takes the pipeline); a pipeline with several names them."""
    if isinstance(obj, torch.nn.Module) or not isinstance(getattr(obj, "components", None), dict):
        return _session(obj)
    cached = _cached_components(obj)
    if len(cached) == 1:
        return next(iter(cached.values()))
    name = type(obj).__name__
    if not cached:
        raise ValueError(f"{name} has no transformer cached by dit_cachepass: call dcp.enable_cache(pipe, config) "
                         "first")
    raise ValueError(f"{name} has {len(cached)} cached transformers ({', '.join(cached)}), each with its own "
                     f"state: pass one of them, e.g. dcp.summary(pipe.{list(cached)[-1]})")


def disable(module: torch.nn.Module) -> torch.nn.Module:
    """Restore the module's original forward and drop all cache state. On a
    ``torch.compile(..., backend="dit_cache")`` result: drop the state and compute every step
    from now on (the module stays compiled; ``._orig_mod`` is the plain module)."""
    session = _session(module)
    if not hasattr(module, _ATTR):  # torch.compile(backend="dit_cache"): stays compiled, caches nothing
        session.enabled = False
        session.states.clear()
        return module
    if getattr(session, "paths", None) is not None:
        session.paths.uninstall()  # the block path's wrapped block forwards
    if session.previous_forward is not None:
        module.forward = session.previous_forward
    else:
        del module.forward
    cc = module.__dict__.get("cache_context")
    if getattr(cc, "_dit_cachepass", False):
        if session.previous_cache_context is not None:
            module.cache_context = session.previous_cache_context
        else:
            del module.cache_context
    delattr(module, _ATTR)
    return module


def refresh(module: Any) -> None:
    """Start a new generation at the next call (no cached value of the old one is reused).
    ``module``: a cached module, or a pipeline with one cached transformer."""
    _one_session(module).refresh()


def summary(module: Any) -> Summary:
    """Per-loop cached/computed steps and diffs of the current generation. ``module``: a cached
    module, or a pipeline with one cached transformer (with several, pass one of them)."""
    return Summary.from_session(_one_session(module))


# ``explain`` lives in .explain (imported last: it uses this module's helpers); re-exported here
from .explain import ExplainReport, LoopReport, explain  # noqa: E402,F401
