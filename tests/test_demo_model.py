"""The shipped trained digits DiT: a real diffusers class that draws the digits it is asked for."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from dit_cachepass import demo_model as dm  # noqa: E402

pytestmark = pytest.mark.skipif(not dm.WEIGHTS_PATH.exists(), reason="digits_dit.safetensors not shipped")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One thread: see conftest.one_thread."""


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return dm.load_digits_dit()


def test_shipped_file_is_small_and_real_diffusers_class(loaded):
    from diffusers import FluxTransformer2DModel

    model, info = loaded
    assert dm.WEIGHTS_PATH.stat().st_size < 5 * 1024 * 1024
    assert type(model) is FluxTransformer2DModel
    assert type(model).__module__.startswith("diffusers.")
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    n_blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    assert n_blocks >= 6
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 2_500_000
    assert info.class_tokens.shape[0] == 11 and info.class_pooled.shape[0] == 11


def test_samples_are_the_requested_digits(loaded):
    model, info = loaded
    labels = torch.arange(10).repeat(2)
    images = dm.sample(model, labels, steps=20, guidance=3.0, seed=0, info=info)
    assert images.shape == (20, 1, 8, 8)
    assert images.min() >= 0.0 and images.max() <= 1.0
    acc = dm.classifier_accuracy(images, labels)
    assert acc >= 0.8, f"classifier accuracy on generated digits {acc:.2f}"
    # seeded: the same call gives the same images
    again = dm.sample(model, labels, steps=20, guidance=3.0, seed=0, info=info)
    assert torch.equal(images, again)


def test_sample_works_through_a_wrapper(loaded):
    """sample() only calls model(**kwargs): a wrapper (as a compiled model is) gives the same images."""
    model, info = loaded
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            calls.append(kw["hidden_states"].shape[0])
            return self.inner(**kw)

    labels = torch.tensor([3, 7])
    ref = dm.sample(model, labels, steps=6, guidance=2.0, seed=1, info=info)
    out = dm.sample(Wrapper(model), labels, steps=6, guidance=2.0, seed=1)   # info from the shipped file
    assert torch.equal(ref, out)
    assert calls == [4] * 6  # one batched cond+uncond forward per step


def test_shipped_classifier_reads_real_digits():
    pytest.importorskip("sklearn")
    images, labels = dm.load_digits_data()
    assert dm.classifier_accuracy(images, labels) > 0.97


def test_trained_model_changes_slowly_between_steps(loaded):
    """First-block residual changes little from step to step: what makes caching pay off."""
    model, info = loaded
    diffs = dm.first_block_residual_diffs(model, torch.arange(10), steps=20, guidance=3.0, seed=0, info=info)
    assert len(diffs) == 19
    mid = sorted(diffs)[len(diffs) // 2]
    assert mid < 0.2, diffs  # ~0.12 trained; ~0.37 with random weights
