"""The shipped trained moving-digit clips model: a real diffusers video DiT (Wan) that draws the
digits it is asked for, moving as in training, and that the cache pass caches without losing them."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from dit_cachepass.demo_model import clips as cm  # noqa: E402

pytestmark = pytest.mark.skipif(not cm.WEIGHTS_PATH.exists(), reason="clips_wan.safetensors not shipped")

LABELS = torch.arange(10)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One thread: see conftest.one_thread."""


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return cm.load_clips_wan()


@pytest.fixture(scope="module")
def clips(loaded):
    model, info = loaded
    return cm.sample(model, LABELS, steps=20, guidance=3.0, seed=0, info=info)


def test_shipped_file_is_small_and_real_diffusers_video_class(loaded):
    from diffusers import WanTransformer3DModel

    model, info = loaded
    assert cm.WEIGHTS_PATH.stat().st_size < 5 * 1024 * 1024
    assert type(model) is WanTransformer3DModel
    assert type(model).__module__.startswith("diffusers.")
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert len(model.blocks) >= 6
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 3_000_000
    assert info.class_tokens.shape == (11, cm.TEXT_TOKENS, model.config.text_dim)
    assert info.meta["num_params"] == n_params and info.meta["sample_acc"] >= 0.8
    assert (info.frames, info.height, info.width) == (4, 8, 12)


def test_training_clips_are_read_correctly_by_the_metric():
    """Real digits on every training trajectory: the per-frame metric and the motion check agree."""
    pytest.importorskip("sklearn")
    from dit_cachepass.demo_model import load_digits_data

    images, labels = load_digits_data()
    images, labels = images[:200], labels[:200]
    tr = torch.tensor(cm.TRAJECTORIES)
    k = torch.arange(len(labels)) % len(tr)
    real = cm.make_clips(images, tr[k, 0], tr[k, 1])
    assert cm.classifier_accuracy(real, labels) > 0.95
    assert cm.motion_consistency(real) == 1.0
    assert cm.motion_consistency(torch.rand(20, 4, 1, 8, 12)) < 0.2


def test_samples_are_the_requested_moving_digits(loaded, clips):
    model, info = loaded
    assert clips.shape == (10, 4, 1, 8, 12)
    assert clips.min() >= 0.0 and clips.max() <= 1.0
    acc = cm.classifier_accuracy(clips, LABELS)
    assert acc >= 0.8, f"per-frame classifier accuracy on generated clips {acc:.2f}"
    assert cm.motion_consistency(clips) >= 0.7
    # seeded: the same call gives the same clips, another seed other clips
    again = cm.sample(model, LABELS, steps=20, guidance=3.0, seed=0, info=info)
    assert torch.equal(clips, again)
    other = cm.sample(model, LABELS[:2], steps=20, guidance=3.0, seed=1, info=info)
    assert not torch.equal(clips[:2], other)


def test_sample_works_through_a_wrapper(loaded):
    """sample() only calls model(**kwargs) with one batched cond+uncond forward per step."""
    model, info = loaded
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            assert set(kw) == {"hidden_states", "timestep", "encoder_hidden_states", "return_dict"}
            calls.append(tuple(kw["hidden_states"].shape))
            return self.inner(**kw)

    labels = torch.tensor([3, 7])
    ref = cm.sample(model, labels, steps=5, guidance=2.0, seed=1, info=info)
    out = cm.sample(Wrapper(model), labels, steps=5, guidance=2.0, seed=1)   # info from the shipped file
    assert torch.equal(ref, out)
    assert calls == [(4, 1, 4, 8, 12)] * 5


def test_trained_model_changes_slowly_between_steps(loaded):
    model, info = loaded
    diffs = info.meta["first_block_rel_l1"]
    assert len(diffs) == 19
    assert sorted(diffs)[len(diffs) // 2] < 0.2, diffs


def test_cache_pass_caches_steps_and_keeps_the_digits():
    import dit_cachepass as dcp

    model, info = cm.load_clips_wan()      # a fresh module: compile replaces its forward
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.3)
    model = dcp.compile(model, cfg, backend="eager")
    clips = cm.sample(model, LABELS, steps=20, guidance=3.0, seed=0, info=info)
    cached = dcp.summary(model).cached_steps
    assert len(cached) >= 2, dcp.summary(model)
    acc = cm.classifier_accuracy(clips, LABELS)
    assert acc >= 0.8, f"accuracy with {len(cached)} cached steps {acc:.2f}"
