"""The ``dit_cache`` dynamo backend: capture -> match -> plan -> rewrite -> lower -> run.

``torch.compile(m, backend="dit_cache", options={"cache_config": cfg})`` finds this
function through the ``torch_dynamo_backends`` entry point; ``dit_cachepass.compile``
calls ``build`` directly with a session it owns.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch.fx as fx

from .capture import capture
from .lower import compile_graph, has_symbolic_inputs
from .matcher import match
from .plan import plan
from .rewrite import split
from .runtime.executor import Runner
from .session import GraphReport, Session, UnsupportedModelError

_OPTION_KEYS = {"cache_config", "calibrator_config", "backend", "strict"}
_SESSIONS: dict[int, tuple[dict, Session]] = {}


class StageError(RuntimeError):
    """An unexpected error inside one stage of the pass (a bug or a graph it does not know)."""

    def __init__(self, stage: str, err: BaseException):
        super().__init__(f"the {stage} stage failed: {type(err).__name__}: {err}")
        self.stage, self.error = stage, err


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
            return compile_graph(gm, example_inputs, session.backend)
        prog = _stage("rewrite", split, cap, cplan)
        report.pieces = prog.pieces
        return _stage("lower", Runner, prog, session, cplan.loops, session.backend, has_symbolic_inputs(gm))
    except StageError as err:
        session.graphs.append(GraphReport(len(gm.graph.nodes), [], [str(err)], [], []))
        session.stage_failed(err)
        return compile_graph(gm, example_inputs, session.backend)


def session_for_options(options: Optional[dict]) -> Session:
    """One session per ``options`` dict, so ``dit_cachepass.summary`` can find it again."""
    options = options if options is not None else {}
    unknown = set(options) - _OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown dit_cache option(s) {sorted(unknown)}: expected {sorted(_OPTION_KEYS)}")
    key = id(options)
    if key not in _SESSIONS or _SESSIONS[key][0] is not options:
        session = Session(options.get("cache_config"), backend=options.get("backend", "inductor"),
                          strict=options.get("strict", False),
                          calibrator_config=options.get("calibrator_config"))
        _SESSIONS[key] = (options, session)
    return _SESSIONS[key][1]


def dit_cache_backend(gm: fx.GraphModule, example_inputs: Sequence[Any],
                      options: Optional[dict] = None, mode: Optional[str] = None) -> Callable:
    """Dynamo backend entry point (``backend="dit_cache"``)."""
    return build(gm, example_inputs, session_for_options(options))
