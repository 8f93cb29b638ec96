"""cache-dit's Forward Patterns 0-5: how a block is called and what it returns.

In a graph the calling convention is gone, but the data flow is not: which stream values
flow from block to block and which come out of a block. We classify by that flow and use
the block's Python signature only to tell the conventions the graph cannot see apart
(P2 vs P3: is a constant encoder tensor passed as the second argument; return order
(h, e) vs (e, h)).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from enum import IntEnum
from typing import Optional

class ForwardPattern(IntEnum):
    P0 = 0  # block(h, e) -> (h, e)
    P1 = 1  # block(h, e) -> (e, h)
    P2 = 2  # block(h, e) -> h        (e constant)
    P3 = 3  # block(h, **kw) -> h     (e, if any, constant in kwargs)
    P4 = 4  # block(h) -> (h, e_new)  (e_new not fed back)
    P5 = 5  # block(h) -> (e_new, h)


@dataclass(frozen=True)
class FlowShape:
    """What the graph says about one block list."""

    carried_streams: int  # values flowing from block i to block i+1
    side_outputs: bool  # a block output that the next block does not consume (P4/P5)
    constant_encoder: bool = False  # a non-stream input derived from the model's encoder input


def _positional_params(block_cls: type) -> list[str]:
    try:
        sig = inspect.signature(block_cls.forward)
    except (TypeError, ValueError, AttributeError):
        return []
    names = [p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names[1:] if names[:1] == ["self"] else names


def _returns_hidden_first(block_cls: type) -> Optional[bool]:
    """Read the block's ``return a, b`` statements: is the first parameter returned first?"""
    params = _positional_params(block_cls)
    if not params:
        return None
    try:
        src = textwrap.dedent(inspect.getsource(block_cls.forward))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and len(node.value.elts) == 2:
            names = [e.id if isinstance(e, ast.Name) else None for e in node.value.elts]
            if names[0] == params[0]:
                return True
            if names[1] == params[0]:
                return False
    return None


def classify(flow: FlowShape, block_cls: type) -> ForwardPattern:
    params = _positional_params(block_cls)
    if flow.carried_streams >= 2:
        return ForwardPattern.P0 if _returns_hidden_first(block_cls) is not False else ForwardPattern.P1
    if flow.side_outputs:
        return ForwardPattern.P4 if _returns_hidden_first(block_cls) is not False else ForwardPattern.P5
    second = params[1] if len(params) > 1 else ""
    takes_encoder = "encoder" in second or "context" in second
    return ForwardPattern.P2 if takes_encoder and flow.constant_encoder else ForwardPattern.P3
