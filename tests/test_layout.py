"""The repository's layout must not shadow other packages. Python started in the clone (a
notebook, ``python -c``) has the root on ``sys.path``, and a benchmark script run as
``python benchmarks/x.py`` has ``benchmarks/``: a folder or module there named like a PyPI
package wins over the installed one. A top-level ``kernels/`` folder once did, and transformers
(which probes for Hugging Face's ``kernels``) broke ``from diffusers import
FluxTransformer2DModel`` with "cannot import name 'CUDAProperties' from 'kernels'"."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dit_cachepass

ROOT = Path(__file__).resolve().parents[1]


def _clean_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # only what Python itself puts on sys.path from the cwd
    return env


def test_diffusers_imports_from_the_repository_root():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    code = "from diffusers import FluxTransformer2DModel; import dit_cachepass; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_dit_cachepass_imported_first_then_diffusers_from_the_root():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    code = ("import dit_cachepass, dit_cachepass.kernels; from diffusers import FluxTransformer2DModel; "
            "import sys; print(sys.modules.get('kernels'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(ROOT / "dit_cachepass") not in proc.stdout.splitlines()[-1]


def test_kernels_live_inside_the_package():
    import dit_cachepass.kernels as K

    pkg = Path(dit_cachepass.__file__).resolve().parent
    assert Path(K.__file__).resolve().parent == pkg / "kernels"
    assert Path(K.__file__).resolve().is_relative_to(ROOT / "dit_cachepass")
    assert not (ROOT / "kernels").exists(), "a top-level kernels/ folder shadows Hugging Face's `kernels`"


def _probed_names() -> set[str]:
    """Packages transformers and diffusers look for with ``_is_package_available("name")``."""
    names = {"kernels"}
    for mod in ("transformers.utils.import_utils", "diffusers.utils.import_utils"):
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.origin:
            continue
        src = Path(spec.origin).read_text()
        names |= {m.split(".")[0] for m in re.findall(r"_is_package_available\(\s*[\"']([\w.]+)[\"']", src)}
    return names


def _importable_names(folder: Path) -> set[str]:
    """Names importable with ``folder`` on sys.path: modules and (namespace) packages."""
    out = set()
    for p in folder.iterdir():
        if p.name.startswith((".", "_")) or p.name.endswith(".egg-info"):
            continue
        if p.is_dir() and p.name.isidentifier():
            out.add(p.name)
        elif p.suffix == ".py":
            out.add(p.stem)
    return out


@pytest.mark.parametrize("folder", ["", "benchmarks"], ids=["root", "benchmarks"])
def test_no_name_on_sys_path_shadows_a_probed_package(folder):
    clashes = _importable_names(ROOT / folder) & _probed_names()
    assert not clashes, f"{folder or 'the repository root'} shadows packages transformers/diffusers probe: {clashes}"


def test_no_import_cycles_between_the_packages_modules():
    """Issue 25: every ``from X import`` inside dit_cachepass (top level or in a function) is an
    edge; no two modules may reach each other. (A package's own ``__init__`` is left out: it runs
    first anyway.)"""
    import ast
    import os

    import dit_cachepass

    root = os.path.dirname(dit_cachepass.__file__)
    top = os.path.dirname(root)
    mods = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, top)[:-3].replace(os.sep, ".")
                mods[name[:-9] if name.endswith(".__init__") else name] = path

    def targets(mod, node):
        if node.level == 0:
            base = node.module or ""
        else:
            parts = mod.split(".") if mods[mod].endswith("__init__.py") else mod.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
        return subs + ([base] if base in mods and len(subs) < len(node.names) else [])

    graph = {m: set() for m in mods}
    for m, path in mods.items():
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                graph[m] |= {t for t in targets(m, node) if t != m and not m.startswith(t + ".")}

    def reaches(a, b):
        seen, todo = set(), [a]
        while todo:
            for n in graph[todo.pop()] - seen:
                if n == b:
                    return True
                seen.add(n)
                todo.append(n)
        return False

    cycles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, f"import cycles: {cycles}"
