"""Front door: ``compile`` / ``enable_cache``, ``disable``, ``refresh``, ``summary``, ``explain``."""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from .backend import StageError, analyse, build, _SESSIONS
from .config import CalibratorConfig, DBCacheConfig, ParallelismConfig, ParamsModifier
from .matcher import NO_BLOCK_LIST
from .parallel import decision_group, enable_parallelism
from .session import GraphReport, Session, UnsupportedModelError
from .stats import Summary

_ATTR = "_dit_cachepass"


def _list_lengths(module: torch.nn.Module) -> dict[str, int]:
    return {name: len(m) for name, m in module.named_modules()
            if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))}


def _private_copy(fn: types.FunctionType) -> types.FunctionType:
    clone = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    return functools.update_wrapper(clone, fn)


def _isolated_forward(module: torch.nn.Module, prior: Optional[Callable]) -> Callable:
    """The module's forward on a private copy of its code object.

    Dynamo keeps one compile cache per code object, with a recompile limit (8) shared by
    every instance of the class; past it, it silently runs eager, i.e. uncached. A private
    code object gives each compiled module its own cache and its own graphs. A diffusers
    hook's forward (``functools.partial(new_forward, module)``, e.g. under context
    parallelism) becomes a private ``new_forward`` bound to the module; other instance-level
    forwards are kept.
    """
    if (isinstance(prior, functools.partial) and isinstance(prior.func, types.FunctionType)
            and len(prior.args) == 1 and not prior.keywords):
        # bound as a method, not re-wrapped in a partial: torch.compile runs any non-function
        # callable through one shared wrapper frame, i.e. one shared cache again
        return _private_copy(prior.func).__get__(prior.args[0])
    if prior is not None:  # an instance-level forward set by someone else (accelerate hooks...)
        return prior
    return _private_copy(type(module).forward).__get__(module)


def compile(module: torch.nn.Module, cache_config: Optional[DBCacheConfig] = None, *,
            calibrator_config: Optional[CalibratorConfig] = None,
            params_modifiers: Union[ParamsModifier, list[ParamsModifier], None] = None,
            backend: str = "inductor", strict: bool = False, process_group: Any = None) -> torch.nn.Module:
    """Cache the block loops of ``module`` (a diffusers transformer) and compile it.

    Returns the same module object with its ``forward`` replaced, so a pipeline keeps using
    its ``.config``, ``.dtype``, hooks and attributes. Parameters are never modified.
    ``backend``: "inductor" (default), "aot_eager" or "eager" (debugging, fast CPU tests).
    ``strict=True`` raises instead of running uncached when no loop can be cached.
    ``calibrator_config``: ``TaylorSeerCalibratorConfig`` or ``FoCaCalibratorConfig`` forecasts
    the middle's residual on cached steps instead of reusing it unchanged.
    ``params_modifiers[k]`` overrides the config of the k-th cached loop (graph order, as
    ``explain`` lists them); a single ``ParamsModifier`` applies to every loop.
    ``process_group``: when each rank holds a shard of the activations (context parallelism),
    the ranks' L1 sums are all-reduced so that every rank takes the same decision; pass the
    group, or ``True`` for the default group, or ``False`` to decide per rank. Left as ``None``,
    a model prepared with diffusers' ``enable_parallelism`` uses its context- (or tensor-)
    parallel mesh's group automatically.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"dit_cachepass.compile expects an nn.Module, got {type(module).__name__}")
    if hasattr(module, _ATTR):
        disable(module)
    session = Session(cache_config, backend=backend, strict=strict, list_lengths=_list_lengths(module),
                      calibrator_config=calibrator_config, params_modifiers=params_modifiers,
                      process_group=decision_group(module, process_group))
    session.previous_forward = module.__dict__.get("forward")
    forward_fn = _isolated_forward(module, session.previous_forward)
    compiled = torch.compile(forward_fn, backend=lambda gm, ex: build(gm, ex, session), dynamic=False)

    @functools.wraps(compiled)
    def forward(*args: Any, **kwargs: Any) -> Any:
        try:
            out = compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # strict=True: raise ours, not dynamo's wrapper
            inner = getattr(e, "inner_exception", None) or e.__cause__
            if isinstance(inner, UnsupportedModelError):
                raise inner from None
            raise
        session.after_forward()
        return out

    module.forward = forward
    setattr(module, _ATTR, session)
    return module


def enable_cache(pipe_or_module: Any, cache_config: Optional[DBCacheConfig] = None, *,
                 calibrator_config: Optional[CalibratorConfig] = None,
                 params_modifiers: Optional[list] = None, backend: str = "inductor",
                 strict: bool = False, parallelism_config: Optional[ParallelismConfig] = None) -> Any:
    """cache-dit's drop-in: cache every transformer of a diffusers pipeline (or one module).

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
                       params_modifiers=params_modifiers, backend=backend, strict=strict)
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
        if parallelism_config is not None:
            enable_parallelism(components[name], parallelism_config)
        compile(components[name], cache_config, calibrator_config=calibrator_config,
                params_modifiers=mods[i] if i < len(mods) else None, backend=backend, strict=strict)
    return pipe_or_module


def disable_cache(pipe_or_module: Any) -> Any:
    """Undo ``enable_cache``."""
    if isinstance(pipe_or_module, torch.nn.Module):
        return disable(pipe_or_module)
    for name, c in getattr(pipe_or_module, "components", {}).items():
        if isinstance(c, torch.nn.Module) and hasattr(c, _ATTR):
            disable(c)
    return pipe_or_module


def _session(obj: Any) -> Session:
    s = getattr(obj, _ATTR, None)
    if s is None and hasattr(obj, "_orig_mod"):  # torch.compile(..., backend="dit_cache")
        wrapper = getattr(getattr(obj, "dynamo_ctx", None), "callback", None)
        while hasattr(wrapper, "_torchdynamo_orig_backend"):
            wrapper = wrapper._torchdynamo_orig_backend
        options = (getattr(wrapper, "kwargs", None) or {}).get("options")
        if options is not None and id(options) in _SESSIONS:
            s = _SESSIONS[id(options)][1]
    if s is None:
        raise ValueError(f"{type(obj).__name__} is not compiled by dit_cachepass: call "
                         "dit_cachepass.compile(module, config) or torch.compile(module, backend='dit_cache').")
    return s


def disable(module: torch.nn.Module) -> torch.nn.Module:
    """Restore the module's original forward and drop all cache state."""
    session = _session(module)
    if session.previous_forward is not None:
        module.forward = session.previous_forward
    else:
        del module.forward
    delattr(module, _ATTR)
    return module


def refresh(module: torch.nn.Module) -> None:
    """Start a new generation at the next call (no cached value of the old one is reused)."""
    _session(module).refresh()


def summary(module: Any) -> Summary:
    """Per-loop cached/computed steps and diffs of the current generation."""
    return Summary.from_session(_session(module))


@dataclass
class LoopReport:
    name: str
    lists: list[str]
    pattern: int
    patterns: dict[str, int]
    fn_blocks: list[str]
    middle_blocks: list[str]
    bn_blocks: list[str]
    streams: int

    def __str__(self) -> str:
        def rng(b: list[str]) -> str:
            return "-" if not b else b[0] if len(b) == 1 else f"{b[0]} .. {b[-1]} ({len(b)})"

        pats = ", ".join(f"{k}: P{v}" for k, v in self.patterns.items())
        return (f"loop {self.name} [{pats}; {self.streams} stream(s)]\n"
                f"    Fn: {rng(self.fn_blocks)}\n    middle (cached): {rng(self.middle_blocks)}\n"
                f"    Bn: {rng(self.bn_blocks)}")


@dataclass
class ExplainReport:
    loops: list[LoopReport]
    graphs: int
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return bool(self.loops)

    def __str__(self) -> str:
        lines = [f"dit_cachepass.explain: {self.graphs} graph(s), {len(self.loops)} cached loop(s)"]
        lines += [str(l) for l in self.loops]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  not cached: {r}" for r in self.reasons + self.skipped]
        if not self.loops:
            lines.append("  -> the model would run uncached (strict=True raises)")
        return "\n".join(lines)


def _graph_breaks(module: torch.nn.Module, prior: Optional[Callable], args: tuple, kwargs: dict) -> list[str]:
    """Why dynamo cannot capture the forward in one graph (its first graph break), if it can't."""
    try:
        with torch.no_grad():
            torch.compile(_isolated_forward(module, prior), backend="eager", fullgraph=True)(*args, **kwargs)
    except Exception as err:  # dynamo's Unsupported / UserError carry the reason and location
        lines = [l.strip() for l in str(err).splitlines() if l.strip()]
        where = next((l for l in lines if l.startswith("File ")), "")
        return [f"graph break: {lines[0] if lines else type(err).__name__} {where}".strip(),
                "no graph holds the whole block loop: a graph break inside it, or one after which "
                "dynamo runs whole frames eagerly, keeps it out of every graph; try "
                "torch._dynamo.config.capture_scalar_outputs=True / capture_dynamic_output_shape_ops=True, "
                "or remove the data-dependent Python branch"]
    return []


def explain(module: torch.nn.Module, *args: Any, cache_config: Optional[DBCacheConfig] = None,
            **kwargs: Any) -> ExplainReport:
    """Trace ``module(*args, **kwargs)`` once and report the loops found, the pattern of
    each, the Fn / middle / Bn split, or why nothing matched. Runs the model eagerly once."""
    existing = getattr(module, _ATTR, None)
    config = cache_config or (existing.config if existing else DBCacheConfig())
    session = Session(config, backend="eager", list_lengths=_list_lengths(module),
                      params_modifiers=existing.params_modifiers if existing else None)
    reports = []

    def backend(gm, ex):
        try:
            reports.append(analyse(gm, ex, session)[2])
        except StageError as err:
            reports.append(GraphReport(len(gm.graph.nodes), [], [f"{err}: the model would run uncached"], [], []))
        return gm.forward

    prior = existing.previous_forward if existing is not None else module.__dict__.get("forward")
    forward = _isolated_forward(module, prior)
    with torch.no_grad():
        torch.compile(forward, backend=backend, dynamic=False)(*args, **kwargs)
    rep = ExplainReport(loops=[], graphs=len(reports))
    for r in reports:
        rep.reasons += r.reasons
        rep.notes += r.notes
        rep.skipped += r.skipped
        for lp in r.loops:
            names = [str(b.ref) for b in lp.loop.blocks]
            pats = {k: int(v) for k, v in lp.loop.patterns.items()}
            rep.loops.append(LoopReport(lp.name, lp.loop.lists, next(iter(pats.values())), pats,
                                        names[lp.fn.start:lp.fn.stop], names[lp.middle.start:lp.middle.stop],
                                        names[lp.bn.start:lp.bn.stop], len(lp.loop.threads)))
    if rep.loops:
        rep.reasons = [r for r in rep.reasons if r != NO_BLOCK_LIST]
    else:
        rep.reasons += _graph_breaks(module, prior, args, kwargs)
    rep.reasons = list(dict.fromkeys(rep.reasons))
    if len(reports) > 1:
        rep.notes.append(f"{len(reports)} graphs: dynamo broke the forward into pieces "
                         "(torch._dynamo.explain lists why); only loops whole inside one graph are cached")
    return rep
