"""The coverage matrix: every diffusers transformer class in the zoo is cached (threshold 0
equals eager, threshold 0.5 takes cached steps on the zoo's slowly varying inputs), or fails
with the reason its entry states. Also the path each class takes when it matters."""

import pytest

from dit_cachepass.tools.coverage import check
from dit_cachepass.testing.zoo import ZOO

# classes whose loop no single dynamo graph holds: the path that caches them
PATHS = {"hidream": "block", "hunyuanvideo15": "block",
         "framepack": "graph (scalar/dynamic-output capture)", "mochi": "graph (scalar/dynamic-output capture)"}


# the hand-tuned entries get deeper checks (reference decisions) in tests/test_models.py
COVERAGE = sorted(n for n in ZOO if ZOO[n].coverage_only)


@pytest.mark.parametrize("name", COVERAGE)
def test_class_is_cached_or_says_why(name):
    e = ZOO[name]
    row = check(e)
    if e.uncached_reason:
        assert not row.cached and e.uncached_reason in row.status, row
    else:
        assert row.exact, row
        assert row.cached, row
    if name in PATHS:
        assert row.path == PATHS[name], row


def test_cli_checks_chosen_classes_with_regional_lowering(tmp_path):
    """``python -m dit_cachepass coverage flux --lowering regional --write F``: the block path
    caches FLUX, and the written table says which lowering it checked."""
    from dit_cachepass.tools.cli import main

    out = tmp_path / "coverage.md"
    assert main(["coverage", "flux", "--lowering", "regional", "-q", "--write", str(out)]) == 0
    text = out.read_text()
    assert "lowering='regional'" in text
    row = next(line for line in text.splitlines() if line.startswith("| FluxTransformer2DModel "))
    assert "| block |" in row and row.endswith("| cached |") and "| yes |" in row, row


def test_cli_checks_regional_lowering_on_the_graph_path_with_a_compiling_backend(tmp_path):
    """``--backend aot_eager --lowering regional``: the pieces are outlined and compiled, FLUX stays
    on the graph path, exact and cached, and the table names the command that made it."""
    from dit_cachepass.tools.cli import main

    out = tmp_path / "coverage.md"
    assert main(["coverage", "flux", "--backend", "aot_eager", "--lowering", "regional", "-q", "--write", str(out)]) == 0
    text = out.read_text()
    assert "aot_eager backend" in text and "--backend aot_eager --lowering regional" in text
    row = next(line for line in text.splitlines() if line.startswith("| FluxTransformer2DModel "))
    assert "| graph |" in row and row.endswith("| cached |") and "| yes |" in row, row
