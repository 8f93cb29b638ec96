"""The benchmark scripts run on the day a GPU is lent, rarely in between: every name they take
from dit_cachepass must still exist (``benchmarks/parallel.py`` once patched
``executor._global_ratio`` after it had moved to ``runtime.middle``, and failed only in its ranks).
Checked statically, without running a benchmark: each ``import``/``from ... import`` of
dit_cachepass and each attribute chain read off such a name (``dcp.api._session``)."""

import ast
import importlib
import types
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _imported(tree: ast.Module) -> dict[str, object]:
    """Local name -> the dit_cachepass module or object it is bound to."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "dit_cachepass":
                    mod = importlib.import_module(a.name)
                    names[a.asname or a.name.split(".")[0]] = mod if a.asname else importlib.import_module("dit_cachepass")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dit_cachepass":
            mod = importlib.import_module(node.module)
            for a in node.names:
                if hasattr(mod, a.name):
                    names[a.asname or a.name] = getattr(mod, a.name)
                else:  # a submodule
                    names[a.asname or a.name] = importlib.import_module(f"{node.module}.{a.name}")
    return names


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_uses_only_names_dit_cachepass_has(path):
    tree = ast.parse(path.read_text())
    names = _imported(tree)  # raises if an imported module or name is gone
    missing = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if chain is None or chain[0] not in names:
            continue
        obj = names[chain[0]]
        for attr in chain[1]:
            if not isinstance(obj, types.ModuleType):
                break  # past modules: attributes of classes and instances are not checked
            if not hasattr(obj, attr):
                missing.append(f"{chain[0]}.{'.'.join(chain[1])} (line {node.lineno})")
                break
            obj = getattr(obj, attr)
    assert not missing, f"{path.name} uses names dit_cachepass no longer has: {missing}"
