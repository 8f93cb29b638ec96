"""Run the Triton kernels on CPU with Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported: ``@triton.jit`` reads it at
decoration time, and triton.language's own helpers (``tl.sum``...) are jitted when triton
is imported. It is set here, before anything below imports triton or the kernels. If
triton was already imported in compiled mode in this process (e.g. something imported
``torch._dynamo`` earlier), the interpreter cannot be switched on any more: the kernel
tests are then skipped with that reason. Run ``pytest tests/kernels`` on its own, or set
TRITON_INTERPRET=1 in the environment (or at the top of a root conftest), to run them.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

INTERPRETED = type(tl.sum).__name__ == "InterpretedFunction"
SKIP_REASON = (
    "triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1, so its kernels "
    "cannot run on CPU in this process; run `pytest tests/kernels` separately or export TRITON_INTERPRET=1"
)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        # The interpreter runs kernels in numpy; NaN/inf/huge inputs make numpy warn.
        item.add_marker(pytest.mark.filterwarnings("ignore::RuntimeWarning"))
        if not INTERPRETED:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    """Each test starts from automatic dispatch; tests that force a backend set it."""
    monkeypatch.delenv("DIT_CACHEPASS_KERNELS", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
