"""The ``dit_cache`` dynamo backend: capture -> match -> plan -> rewrite -> lower -> run.

``torch.compile(m, backend="dit_cache", options={"cache_config": cfg})`` finds this
function through the ``torch_dynamo_backends`` entry point; ``dit_cachepass.compile``
calls ``build`` directly with a session it owns.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
from torch.utils.weak import WeakIdKeyDictionary

from .compiler.capture import capture
from .errors import StageError
from .compiler.lower import CompileOptions, compile_whole, guarded_by_dynamo, has_symbolic_inputs
from .compiler.matcher import match
from .compiler.plan import plan
from .compiler.fold import fold
from .compiler.rewrite import split
from .runtime.executor import Runner
from .runtime.session import GraphReport, Session, UnsupportedModelError

_OPTION_KEYS = {"cache_config", "calibrator_config", "backend", "strict", "lowering"}
# parameter / buffer tensor -> the session of the module that owns it (torch.compile's backend).
# Weak keys, compared by identity: a session (and every cached tensor) dies with its module.
_SESSIONS: "WeakIdKeyDictionary" = WeakIdKeyDictionary()


def _stage(name: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except (UnsupportedModelError, StageError):
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the pass runs the graph uncached
        raise StageError(name, err) from err


def analyse(gm: fx.GraphModule, example_inputs: Sequence[Any], session: Session):
    """capture -> match -> plan. Raises ``StageError`` naming the stage that failed."""
    cap = _stage("capture", capture, gm, example_inputs)
    found = _stage("match", match, cap, session.config.loop_layout, session.list_lengths)
    cplan = _stage("plan", lambda: plan(found.loops, [session.config_for(k) for k in range(len(found.loops))]))
    report = GraphReport(len(cap.order), cplan.loops, found.reasons, found.notes, cplan.skipped)
    return cap, cplan, report


def build(gm: fx.GraphModule, example_inputs: Sequence[Any], session: Session) -> Callable:
    """The backend callable for one dynamo graph: a ``Runner`` over the cached pieces, or the
    whole graph compiled as it is when nothing can be cached or any stage of the pass fails
    (a warning names the stage; ``strict=True`` raises ``UnsupportedModelError``)."""
    try:
        cap, cplan, report = analyse(gm, example_inputs, session)
        session.graphs.append(report)
        if not cplan.loops:
            session.no_loop(report)
            return compile_whole(gm, example_inputs, session.backend, session.compile_options)
        prog = _stage("rewrite", lambda c, p: fold(split(c, p)), cap, cplan)
        report.pieces = prog.pieces
        guarded = frozenset(i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")
                            if guarded_by_dynamo(n))
        return _stage("lower", Runner, prog, session, cplan.loops, session.backend, has_symbolic_inputs(gm), guarded)
    except StageError as err:
        session.graphs.append(GraphReport(len(gm.graph.nodes), [], [str(err)], [], []))
        session.stage_failed(err)
        return compile_whole(gm, example_inputs, session.backend, session.compile_options)


def session_for_options(options: Optional[dict], mode: Optional[str] = None) -> Session:
    """A new session built from torch.compile's ``options`` (validated here): the cache's own
    keys, ``mode`` (torch.compile does not take ``mode=`` together with ``options=``), and any
    ``torch._inductor.config`` setting, which reaches Inductor for every piece."""
    if options is not None and not isinstance(options, Mapping):
        t = type(options)
        got = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
        raise TypeError(
            f"torch.compile(..., backend='dit_cache', options=...) expects options to be a dict, got {got} "
            f"{_short_repr(options)}: pass options={{'cache_config': dcp.DBCacheConfig(...)}} (keys: "
            f"{', '.join(sorted(_OPTION_KEYS | {'mode'}))}, or torch._inductor.config settings), "
            "or use dcp.compile(module, cache_config)")
    options = dict(options) if options is not None else {}
    mode = options.pop("mode", mode)
    inductor = {k: v for k, v in options.items() if k not in _OPTION_KEYS}
    known = torch._inductor.config.get_config_copy()
    unknown = sorted(k for k in inductor if k not in known)
    if unknown:
        raise ValueError(f"unknown dit_cache option(s) {unknown}: expected {sorted(_OPTION_KEYS | {'mode'})} "
                         "or torch._inductor.config settings (e.g. 'max_autotune')")
    if getattr(options.get("cache_config"), "skip_whole_call", False):
        raise ValueError("cache_config.skip_whole_call=True cannot run under torch.compile(..., backend='dit_cache'): "
                         "the backend only sees the call's graph, and a skipped call must return before it; use "
                         "dcp.compile(module, cache_config) or dcp.enable_cache(pipe, cache_config)")
    return Session(options.get("cache_config"), backend=options.get("backend", "inductor"),
                   strict=options.get("strict", False), calibrator_config=options.get("calibrator_config"),
                   compile_options=CompileOptions(mode=mode, options=inductor,
                                                  lowering=options.get("lowering", "full")))


def _short_repr(value: Any, limit: int = 120) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


_PARAM = re.compile(r"^l_(self|fn_args_0)_.*_(parameters|buffers)_")


def session_of(module: Any) -> Optional[Session]:
    """The session of a module run through ``backend="dit_cache"`` (found by its parameters)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        s = _SESSIONS.get(t)
        if s is not None:
            return s
    return None


def register(module: Any, session: Session) -> None:
    """Key ``session`` by every parameter and buffer of ``module`` (weakly: it dies with them)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        _SESSIONS[t] = session


def _resolver(runner: Runner, options: Optional[dict], report: Optional[GraphReport],
              mode: Optional[str] = None) -> Callable[[tuple], Session]:
    """torch.compile compares backends by their options' value, and dynamo keeps one cache per
    code object of the class's forward: every instance of a class (and every equal ``options``)
    shares this runner. The parameters passed in as graph inputs tell the modules apart: each
    module gets its own session, created on its first call and keyed weakly by its tensors.
    ``options`` is held by the runner only (dynamo's cache holds the runner; no tensor)."""
    slots = [i for i, n in enumerate(runner.prog.arg_names) if _PARAM.match(n)]
    fallback: list[Session] = []  # a module without parameters: one session per runner

    def resolve(args: tuple) -> Session:
        keys = [args[i] for i in slots if isinstance(args[i], torch.Tensor)]
        session = next((s for s in map(_SESSIONS.get, keys[:1]) if s is not None), None)
        if session is None:
            session = next((s for s in map(_SESSIONS.get, keys[1:]) if s is not None), None)
            if session is None and not keys:
                if not fallback:
                    fallback.append(session_for_options(options, mode))
                session = fallback[0]
            if session is None:
                session = session_for_options(options, mode)
            for t in keys:
                _SESSIONS[t] = session
        if runner not in session.runners:
            session.runners.append(runner)
            if report is not None:
                session.graphs.append(report)
        return session

    return resolve


def dit_cache_backend(gm: fx.GraphModule, example_inputs: Sequence[Any],
                      options: Optional[dict] = None, mode: Optional[str] = None) -> Callable:
    """Dynamo backend entry point (``backend="dit_cache"``). The session passed to ``build`` only
    analyses the graph; at run time each module is served by its own session (``_resolver``)."""
    template = session_for_options(options, mode)
    fn = build(gm, example_inputs, template)
    if isinstance(fn, Runner):
        fn.resolve = _resolver(fn, options, template.graphs[-1] if template.graphs else None, mode)
    return fn
