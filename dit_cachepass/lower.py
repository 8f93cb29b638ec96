"""Lower: compile each piece with the chosen backend, on its first call.

Pieces are compiled lazily with the real tensors of the first call, so no extra forward
runs at compile time; after that a piece is a plain callable and the host-side branch
between pieces costs no recompile.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

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


class LazyCompiled:
    """A piece compiled on first use; ``__call__(*args)`` returns the piece's output tuple."""

    __slots__ = ("gm", "backend", "fn")

    def __init__(self, gm: fx.GraphModule, backend: str):
        self.gm, self.backend, self.fn = gm, backend, None

    def __call__(self, *args: Any) -> Any:
        if self.fn is None:
            self.fn = compile_graph(self.gm, args, self.backend)
        return self.fn(*args)
