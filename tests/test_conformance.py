"""dit_cachepass on diffusers' own pipeline fast-test fixtures (vendored under tests/conformance/fixtures).

Default CI runs a small representative subset through the same runner functions as
``python -m tests.conformance.run``; ``DCP_CONFORMANCE=all pytest tests/test_conformance.py`` runs every
fixture class (slow: tens of minutes on 2 cores; `make conformance` writes docs/conformance.md instead).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conformance import hub_standins, run, vendor  # noqa: E402

# text2img (MMDiT, double-stream), video (Wan, LTX), linear-attention Sana (+ its controlnet), img2img, SD3 controlnet
SUBSET = [
    "flux/fx_pipeline_flux::TestFluxPipeline",
    "qwenimage/fx_qwenimage::TestQwenImagePipeline",
    "wan/fx_wan::TestWanPipeline",
    "ltx/fx_ltx::LTXPipelineFastTests",
    "sana/fx_sana_controlnet::SanaControlNetPipelineFastTests",
    "flux/fx_pipeline_flux_img2img::FluxImg2ImgPipelineFastTests",
    "controlnet_sd3/fx_controlnet_sd3::StableDiffusion3ControlNetPipelineFastTests",
]
ALL = os.environ.get("DCP_CONFORMANCE", "").lower() == "all"


@pytest.fixture(scope="module", autouse=True)
def _harness(one_thread):
    """Quiet logs and offline hub stand-ins for this module only."""
    run._quiet()
    hub_standins.install()
    yield
    hub_standins.uninstall()


def _fixtures() -> list[run.Fixture]:
    found = run.discover()
    if ALL:
        return found
    by_id = {f.id: f for f in found}
    return [by_id[i] for i in SUBSET]


@pytest.mark.parametrize("fx", _fixtures(), ids=lambda f: f.id)
def test_fixture_conforms(fx: run.Fixture) -> None:
    """threshold 0 == uncached; threshold 0.5 caches steps (>= 2 blocks) and stays finite; repeat is identical."""
    rows = run.check_all_variants(fx)
    for row in rows:
        if ALL and row.status == "skip":
            continue  # fixtures that cannot run here are reported by the runner, not failed
        assert row.status == "pass", f"{row.label}: {row.reason}"
        assert row.max_diff0 is not None and row.max_diff0 <= 1e-4, row.label
        assert row.repeat_diff == 0.0, row.label
    assert rows[-1].blocks != "-"
    if not ALL:  # the subset's block lists reach >= 2 (directly or via the 2-block variant): caching must happen
        assert any(c.isdigit() for c in rows[-1].cached_steps.split(":", 1)[-1]), rows[-1].cached_steps


def test_discovery_covers_dit_pipelines() -> None:
    """Every vendored file yields a fixture class (or an import-error row), and none is a pytest test module."""
    found = run.discover()
    assert len(found) >= 100
    files = sorted(p for p in run.FIXTURES.rglob("*.py"))
    assert not [p for p in files if p.name.startswith("test_") or p.name.endswith("_test.py")]
    assert {f.module for f in found} == {f"{p.parent.name}/{p.stem}" for p in files if p.stem.startswith("fx_")}
    assert {"wan/fx_wan_22::TestWan22Pipeline", "flux/fx_pipeline_flux::TestFluxPipeline"} <= {f.id for f in found}


def test_vendor_rewrite_points_helpers_at_shim() -> None:
    """Upstream helper imports go to the shim; sibling helpers and diffusers imports stay untouched."""
    src = ("from diffusers import FluxPipeline\nfrom ..test_pipelines_common import PipelineTesterMixin\n"
           "    from ...testing_utils import torch_device\nfrom tests.pipelines.pipeline_params import X\n"
           "from .cosmos_guardrail import DummyCosmosSafetyChecker\n")
    out = vendor.rewrite(src, "tests/pipelines/x/test_x.py", "0" * 40)
    assert "from tests.conformance.shim import PipelineTesterMixin" in out
    assert "    from tests.conformance.shim import torch_device" in out
    assert "from tests.conformance.shim import X" in out
    assert "from .cosmos_guardrail import DummyCosmosSafetyChecker" in out
    assert "from diffusers import FluxPipeline" in out
    assert out.count("from tests.conformance.shim") == 3


def test_max_diff_and_outputs() -> None:
    """The comparison the checks rely on: shape mismatch is an infinite diff, PIL/np/tensor outputs all count."""
    import numpy as np
    import torch
    from PIL import Image

    a = run.tensors_of((np.zeros((1, 4, 4, 3), np.float32),))
    b = run.tensors_of(([Image.fromarray(np.full((4, 4, 3), 255, np.uint8))],))
    assert run.max_diff(a, [b[0][None]]) == pytest.approx(1.0)
    assert run.max_diff(a, [torch.zeros(1, 4, 4, 2)]) == float("inf")
    with pytest.raises(run.FixtureSkip):
        run.tensors_of(("no tensor",))
