"""Capture: a dynamo FX graph -> the same graph with every op attributed to a block.

Dynamo records, for each op, the stack of modules it was called from
(``nn_module_stack``). The outermost entry that is an indexed child (``<list>.<i>``) names
the block; ops with no such entry are glue around (or inside) the loop, and so are ops that a
diffusers hook on the block itself runs (the context-parallel split of block 0's input).
"""

from __future__ import annotations

import functools
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from .regions import RegionError, StateRegions, find_regions

_DICT_MODULES = re.compile(r"\.__dict__\['_modules'\]\['([^']+)'\]")
_ITEM = re.compile(r"\['([^']+)'\]|\[(\d+)\]")
_CHILD = re.compile(r"^(?P<list>.+)\.(?P<idx>\d+)$")
# The root module as dynamo names it: ``self``; the compiled function, or the module that a
# ``functools.partial(new_forward, module)`` hook wrapper binds (diffusers' HookRegistry, e.g.
# under context parallelism); or, in a frame dynamo resumed after a graph break inside such a
# hook, the bound forward's ``__self__`` (``L['function_reference'].forward.__self__``).
_ROOT = re.compile(r"^(L\['self'\]|L\['fn'\](\.args\[0\])?|self|L\['\w+'\](\.\w+)*?\.__self__)")
# Where diffusers' ModelHooks live: ops they run around a block's forward (context-parallel
# sharding of the block's inputs) are glue between blocks, not part of the block.
_HOOK_FILE = re.compile(r'File "[^"]*[/\\]diffusers[/\\]hooks[/\\][^"]*"')


def normalize_module_path(raw: str) -> str:
    """``L['self'].__dict__['_modules']['blocks'].0.attn`` -> ``blocks.0.attn``; likewise
    ``L['fn'].args[0].blocks.0`` (a hook-wrapped forward) -> ``blocks.0``, and
    ``L['function_reference'].forward.__self__.blocks.0`` (resumed inside a hook) likewise."""
    path = _ROOT.sub("", raw, count=1)
    path = _DICT_MODULES.sub(r".\1", path)
    path = path.replace("._modules", "")
    path = _ITEM.sub(lambda m: "." + (m.group(1) or m.group(2)), path)
    return path.strip(".")


@dataclass(frozen=True, order=True)
class BlockRef:
    """One call of one block: ``list_path`` names the ModuleList, ``index`` the child."""

    list_path: str
    index: int

    def __str__(self) -> str:
        return f"{self.list_path}.{self.index}"


@dataclass
class CapturedGraph:
    """A dynamo graph plus, for each attributed op, the block it belongs to."""

    gm: fx.GraphModule
    example_inputs: Sequence[Any]
    block_of: dict[fx.Node, BlockRef]
    block_class: dict[str, type]  # list path -> class of its blocks
    top_level: dict[str, bool]  # list path -> called directly from the root forward
    params: set[fx.Node]  # placeholders that are parameters or buffers
    order: dict[fx.Node, int]  # position of each node in the graph
    regions: StateRegions = field(default_factory=StateRegions)  # autocast / grad / vmap state per op
    region_error: Optional[str] = None  # why the regions cannot be re-entered per piece, if so

    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.gm.graph.nodes)


def _innermost_frame_is_hook(node: fx.Node) -> bool:
    frames = [line for line in (node.meta.get("stack_trace") or "").splitlines() if line.strip().startswith("File")]
    return bool(frames) and _HOOK_FILE.search(frames[-1]) is not None


def _is_param(node: fx.Node, example: Any) -> bool:
    if isinstance(example, torch.nn.Parameter):
        return True
    return "_parameters_" in node.name or "_buffers_" in node.name


def capture(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> CapturedGraph:
    """Attribute ops of a dynamo-produced graph to blocks (no graph changes)."""
    block_of: dict[fx.Node, BlockRef] = {}
    block_class: dict[str, type] = {}
    top_level: dict[str, bool] = {}
    params: set[fx.Node] = set()
    order: dict[fx.Node, int] = {}
    region_error = None
    try:
        regions = find_regions(gm.graph)
    except RegionError as err:
        regions, region_error = StateRegions(), str(err)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, ex in zip(placeholders, example_inputs):
        if _is_param(node, ex):
            params.add(node)
    for pos, node in enumerate(gm.graph.nodes):
        order[node] = pos
        if node.op not in ("call_function", "call_method", "call_module") or node in regions.markers:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        for depth, (raw, cls) in enumerate(stack.values()):
            m = _CHILD.match(normalize_module_path(raw))
            if m is None:
                continue
            if depth == len(stack) - 1 and _innermost_frame_is_hook(node):
                break  # a hook on the block itself: glue before/after the block
            ref = BlockRef(m.group("list"), int(m.group("idx")))
            block_of[node] = ref
            block_class.setdefault(ref.list_path, cls)
            top_level[ref.list_path] = top_level.get(ref.list_path, True) and depth == 0
            break
    return CapturedGraph(gm, example_inputs, block_of, block_class, top_level, params, order, regions, region_error)


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
    every instance of the class; past it, it runs eager, i.e. uncached (``ModulePaths``
    warns). A private code object gives each compiled module its own cache and its own graphs. A diffusers
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
