"""Re-vendor diffusers' DiT pipeline fast-test fixtures into ``tests/conformance/fixtures``.

One command updates the vendored copies from any diffusers checkout or bare git dir::

    python tests/conformance/vendor.py --repo /work/.mirror/huggingface+diffusers/repo [--rev HEAD]

Only the fixture parts are vendored (see ``trim``): per file the license header, the imports and other
module-level statements, the module-level definitions the kept code uses, and per fixture class (one with
``get_dummy_components``, or deriving from one) the class statement with only ``pipeline_class``,
``get_dummy_components``, ``get_dummy_inputs`` and the members those reach through ``self.x``; the test
methods are dropped. Kept statements are cut out by ``ast`` line ranges, so they stay byte-identical upstream.

Why a script: the fixtures are upstream code; we keep the kept parts byte-for-byte except that relative imports of
upstream test helpers (``..test_pipelines_common``, ``...testing_utils``, ``..pipeline_params`` ...) are
rewritten to ``tests.conformance.shim`` (stubs), and files are renamed ``test_x.py`` -> ``fx_x.py`` so pytest
never collects them. A file is vendored when its ``get_dummy_components`` returns a ``"transformer*"`` entry.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEST = HERE / "fixtures"
SHIM = "tests.conformance.shim"
# `"transformer": transformer,` / `"transformer_2": ...` in the components dict
TRANSFORMER_KEY = re.compile(r'"transformer[_0-9a-z]*"\s*:')
# relative imports that leave the pipeline's own folder (two or more dots) go to the shim
REL_IMPORT = re.compile(r"^(\s*)from (?:\.{2,}[\w.]*|tests\.(?:pipelines|models|testing_utils)[\w.]*) import ", re.M)
# sibling helpers (one dot) are vendored alongside, unchanged
SIBLING = re.compile(r"^\s*from \.(\w+) import ", re.M)


def git(repo: Path, *args: str) -> str:
    """Run git against a checkout or a bare git dir (the mirror has no work tree)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def rewrite(src: str, origin: str, commit: str) -> str:
    """Point upstream helper imports at the shim; prepend a provenance line, keep everything else."""
    body = REL_IMPORT.sub(lambda m: f"{m.group(1)}from {SHIM} import ", src)
    note = f"# Vendored from huggingface/diffusers@{commit[:10]} {origin} by tests/conformance/vendor.py (relative imports -> {SHIM}).\n"
    if "Licensed under the Apache License" not in src[:2000]:
        note += "# Licensed under the Apache License, Version 2.0 (diffusers); see tests/conformance/fixtures/LICENSE.\n"
    return note + body


# ------------------------------------------------------------------ trimming to the fixture parts
KEEP_METHODS = {"get_dummy_components", "get_dummy_inputs"}
KEEP_ATTRS = {"pipeline_class"}  # what run.py reads from a fixture class, besides the two methods


def _start(node: ast.stmt) -> int:
    """First line of a statement, decorators included (1-based)."""
    return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _self_attrs(node: ast.AST) -> set[str]:
    """``self.x`` / ``cls.x`` / ``type(self).x`` attribute names used in a node."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute):
            v = n.value
            if (isinstance(v, ast.Name) and v.id in ("self", "cls")) or (
                    isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "type"):
                out.add(n.attr)
    return out


def _member_name(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return {stmt.name}
    if isinstance(stmt, ast.Assign):
        return {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return {stmt.target.id}
    return set()


def _defined(stmt: ast.stmt) -> set[str]:
    """Module-level names a definition statement binds (empty for statements that are always kept)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def trim(src: str) -> str:
    """Only the fixture parts of an upstream test module, each kept statement byte-identical.

    Kept: everything above the first statement (license header), every module-level statement that is not a
    definition (imports, ``if``/``try`` import blocks, calls such as ``enable_full_determinism()``), the fixture
    classes (those defining ``get_dummy_components``/``get_dummy_inputs`` and every class deriving from one in
    the module, so the runner finds the same leaf classes) with only ``pipeline_class``, the two methods and the
    members they reach through ``self.x`` (transitively), and the module-level definitions the kept code uses.
    """
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    body = tree.body
    # class nodes, not names: upstream sometimes redefines a name (``class A(A)``); a base name means the
    # latest class of that name defined before
    fixture: list[ast.ClassDef] = []
    bases_of: dict[int, list[ast.ClassDef]] = {}
    latest: dict[str, ast.ClassDef] = {}
    for s in body:
        if not isinstance(s, ast.ClassDef):
            continue
        bases_of[id(s)] = [latest[b.id] for b in s.bases if isinstance(b, ast.Name) and b.id in latest]
        own = {m for st in s.body for m in _member_name(st)}
        if own & KEEP_METHODS or any(b in fixture for b in bases_of[id(s)]):
            fixture.append(s)
        latest[s.name] = s
    # in-module bases of fixture classes (mixins holding shared members) are fixture classes too
    changed = True
    while changed:
        changed = False
        for c in list(fixture):
            for b in bases_of[id(c)]:
                if b not in fixture:
                    fixture.append(b)
                    changed = True
    fixture.sort(key=lambda c: c.lineno)
    fixture_ids = {id(c) for c in fixture}

    # members needed, module-wide over fixture classes (self.x may resolve to any class in the MRO)
    need = KEEP_METHODS | KEEP_ATTRS
    kept_members: dict[str, list[ast.stmt]] = {}
    while True:
        kept_members = {id(c): [st for st in c.body if _member_name(st) & need] for c in fixture}
        # bare names inside a class body can refer to earlier class-level assignments
        grown = set(need)
        for c in fixture:
            cls_names = {m for st in c.body for m in _member_name(st) if isinstance(st, (ast.Assign, ast.AnnAssign))}
            for st in kept_members[id(c)]:
                grown |= _self_attrs(st)
                if isinstance(st, (ast.Assign, ast.AnnAssign)):
                    grown |= _names(st) & cls_names
        if grown == need:
            break
        need = grown

    # module-level definitions reached from the kept code (transitively)
    defs = {name: s for s in body for name in _defined(s) if id(s) not in fixture_ids}
    always = [s for s in body if not _defined(s)]
    used: set[str] = set()
    frontier: list[ast.AST] = [*always]
    for c in fixture:
        frontier += [*c.bases, *c.keywords, *c.decorator_list, *kept_members[id(c)]]
    seen: set[int] = set()
    while frontier:
        node = frontier.pop()
        for name in _names(node) - used:
            used.add(name)
            if name in defs and id(defs[name]) not in seen:
                seen.add(id(defs[name]))
                frontier.append(defs[name])

    out = ["".join(lines[: _start(body[0]) - 1]) if body else src]
    prev: ast.stmt | None = None  # previous top-level statement in the source, if it was kept
    for i, s in enumerate(body):
        if id(s) in fixture_ids:
            members = kept_members[id(s)]
            first = s.body[0]
            header = "".join(lines[_start(s) - 1: _start(first) - 1])
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                members = [first, *[m for m in members if m is not first]]  # keep the class docstring
            parts = ["".join(lines[_start(m) - 1: m.end_lineno]) for m in members] or [
                " " * (first.col_offset) + "pass  # (vendor.py: only the fixture parts are vendored)\n"]
            seg = header.rstrip("\n") + "\n" + "\n".join(parts)
        elif not _defined(s) or id(s) in seen:
            seg = "".join(lines[_start(s) - 1: s.end_lineno])
        else:
            prev = None
            continue
        # the upstream gap (blank lines, comments) after a kept neighbour; two blank lines after a dropped one
        gap = "".join(lines[prev.end_lineno: _start(s) - 1]) if prev is not None else ("\n\n" if i else "")
        out.append(gap + seg)
        prev = s
    return "".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("/work/.mirror/huggingface+diffusers/repo"))
    ap.add_argument("--rev", default="HEAD")
    a = ap.parse_args(argv)
    commit = git(a.repo, "rev-parse", a.rev).strip()
    date = git(a.repo, "log", "-1", "--format=%cI", commit).strip()
    files = [f for f in git(a.repo, "ls-tree", "-r", "--name-only", commit, "tests/pipelines").splitlines()
             if re.search(r"tests/pipelines/[^/]+/test_[^/]+\.py$", f)]
    if DEST.exists():
        shutil.rmtree(DEST)
    DEST.mkdir(parents=True)
    (DEST / "__init__.py").write_text('"""Vendored diffusers pipeline fast-test fixtures (not collected by pytest)."""\n')
    (DEST / "LICENSE").write_text(git(a.repo, "show", f"{commit}:LICENSE"))
    # pure data (param-name sets) that fixtures do set arithmetic on: vendored as is, re-exported by the shim
    (DEST / "pipeline_params.py").write_text(rewrite(git(a.repo, "show", f"{commit}:tests/pipelines/pipeline_params.py"),
                                                     "tests/pipelines/pipeline_params.py", commit))
    vendored: list[str] = []
    for f in files:
        src = git(a.repo, "show", f"{commit}:{f}")
        if "get_dummy_components" not in src or not TRANSFORMER_KEY.search(src):
            continue
        pkg = DEST / f.split("/")[2]
        if not pkg.exists():
            pkg.mkdir()
            (pkg / "__init__.py").write_text("")
        for sib in set(SIBLING.findall(src)):  # e.g. cosmos_guardrail.py
            sib_path = f"{f.rsplit('/', 1)[0]}/{sib}.py"
            (pkg / f"{sib}.py").write_text(rewrite(git(a.repo, "show", f"{commit}:{sib_path}"), sib_path, commit))
        name = "fx_" + Path(f).name.removeprefix("test_")
        (pkg / name).write_text(rewrite(trim(src), f, commit))
        vendored.append(f"{pkg.name}/{name}")
    (DEST / "README.md").write_text(
        "# Vendored diffusers pipeline fast-test fixtures\n\n"
        f"Vendored by `tests/conformance/vendor.py` from huggingface/diffusers commit `{commit}` ({date}), "
        f"`tests/pipelines/*/test_*.py` files whose dummy components include a `transformer*` module; "
        f"{len(vendored)} files. Only the fixture parts are vendored: the license header, imports and the "
        f"module-level definitions they use, and per fixture class `pipeline_class`, `get_dummy_components`, "
        f"`get_dummy_inputs` and the members those call on `self`; test methods are dropped (kept code is "
        f"byte-identical to upstream apart from relative imports pointing at `tests.conformance.shim`). "
        f"License: Apache-2.0, see `LICENSE`.\n\n" + "".join(f"- `{v}`\n" for v in vendored))
    print(f"vendored {len(vendored)} files from {commit[:10]} ({date}) into {DEST}")


if __name__ == "__main__":
    main()
