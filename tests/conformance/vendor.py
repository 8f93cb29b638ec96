"""Re-vendor diffusers' DiT pipeline fast-test fixtures into ``tests/conformance/fixtures``.

One command updates the vendored copies from any diffusers checkout or bare git dir::

    python tests/conformance/vendor.py --repo /work/.mirror/huggingface+diffusers/repo [--rev HEAD]

Why a script: the fixtures are upstream code; we keep them byte-for-byte except that relative imports of
upstream test helpers (``..test_pipelines_common``, ``...testing_utils``, ``..pipeline_params`` ...) are
rewritten to ``tests.conformance.shim`` (stubs), and files are renamed ``test_x.py`` -> ``fx_x.py`` so pytest
never collects them. A file is vendored when its ``get_dummy_components`` returns a ``"transformer*"`` entry.
"""

from __future__ import annotations

import argparse
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
        (pkg / name).write_text(rewrite(src, f, commit))
        vendored.append(f"{pkg.name}/{name}")
    (DEST / "README.md").write_text(
        "# Vendored diffusers pipeline fast-test fixtures\n\n"
        f"Vendored by `tests/conformance/vendor.py` from huggingface/diffusers commit `{commit}` ({date}), "
        f"`tests/pipelines/*/test_*.py` files whose dummy components include a `transformer*` module; "
        f"{len(vendored)} files. License: Apache-2.0, see `LICENSE`.\n\n" + "".join(f"- `{v}`\n" for v in vendored))
    print(f"vendored {len(vendored)} files from {commit[:10]} ({date}) into {DEST}")


if __name__ == "__main__":
    main()
