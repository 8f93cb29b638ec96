"""A small TRAINED diffusers DiT shipped with the package: class-conditional digits.

``FluxTransformer2DModel`` (the genuine diffusers class; 3 double-stream + 5 single-stream
blocks, width 96) trained with rectified flow on scikit-learn's 8x8 ``digits`` images
(1797 images, 10 classes). Images are packed 2x2 into 16 tokens of 4 channels, as FluxPipeline
packs latents. The class is the conditioning: a learned per-class sequence of text tokens
(``encoder_hidden_states``) plus a learned per-class pooled vector (``pooled_projections``);
class 10 is the null class used for classifier-free guidance (dropped 15% of the time in
training). The weights (fp16 on disk, fp32 once loaded), the class tables, a tiny digit
classifier and the config all live in one safetensors file beside this module
(``digits_dit.safetensors``); ``python -m dit_cachepass.demo_model.train`` rebuilds it.

Usage::

    model, info = load_digits_dit()
    images = sample(model, torch.arange(10), steps=20, guidance=3.0, seed=0)   # (10,1,8,8) in [0,1]
    acc = classifier_accuracy(images, torch.arange(10))

``sample`` only calls ``model(hidden_states=..., timestep=..., encoder_hidden_states=...,
pooled_projections=..., img_ids=..., txt_ids=..., return_dict=False)[0]``, so a wrapped or
compiled model can be passed in its place (the class tables come from ``info``, or from the
shipped file when ``info`` is omitted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

WEIGHTS_PATH = Path(__file__).with_name("digits_dit.safetensors")

NUM_CLASSES = 10
NULL_CLASS = 10          # index of the unconditional ("dropped label") embedding
IMAGE_SIZE = 8           # digits are 8x8 grayscale
PATCH = 2                # 2x2 packing -> (8/2)^2 = 16 tokens of 4 channels

# diffusers FluxTransformer2DModel config used by train.py (also stored in the file's metadata)
MODEL_CONFIG = dict(
    patch_size=1, in_channels=PATCH * PATCH, out_channels=None, num_layers=3, num_single_layers=5,
    attention_head_dim=32, num_attention_heads=3, joint_attention_dim=64, pooled_projection_dim=64,
    guidance_embeds=False, axes_dims_rope=(8, 12, 12),
)
TEXT_TOKENS = 4          # length of the per-class encoder_hidden_states sequence

DIT_PREFIX = "dit."
COND_PREFIX = "cond."
CLS_PREFIX = "classifier."


@dataclass
class DigitsInfo:
    """Everything besides the transformer needed to sample: class tables and geometry."""

    config: dict
    class_tokens: torch.Tensor      # (11, TEXT_TOKENS, joint_attention_dim), row 10 = null class
    class_pooled: torch.Tensor      # (11, pooled_projection_dim)
    image_size: int = IMAGE_SIZE
    patch: int = PATCH
    null_class: int = NULL_CLASS
    meta: dict = field(default_factory=dict)   # training record (steps, seed, time, accuracy, ...)

    @property
    def num_params(self) -> int:
        return int(self.meta.get("num_params", 0))


# ----------------------------------------------------------------------------- model

def build_model(config: Optional[dict] = None) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    cfg = dict(MODEL_CONFIG if config is None else config)
    cfg["axes_dims_rope"] = tuple(cfg["axes_dims_rope"])
    return FluxTransformer2DModel(**cfg)


class ClassConditioner(nn.Module):
    """Learned per-class token sequence + pooled vector (training-time holder of the tables)."""

    def __init__(self, text_tokens: int = TEXT_TOKENS, joint_dim: int = 64, pooled_dim: int = 64):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(NUM_CLASSES + 1, text_tokens, joint_dim))
        self.pooled = nn.Parameter(torch.randn(NUM_CLASSES + 1, pooled_dim))

    def forward(self, labels: torch.Tensor):
        return self.tokens[labels], self.pooled[labels]


def pack(images: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(N,1,H,W) -> (N, (H/p)*(W/p), p*p) tokens, FluxPipeline-style 2x2 packing."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, image_size: int = IMAGE_SIZE, patch: int = PATCH) -> torch.Tensor:
    n, _, d = tokens.shape
    g = image_size // patch
    c = d // (patch * patch)
    x = tokens.reshape(n, g, g, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, c, image_size, image_size)


def make_ids(image_size: int = IMAGE_SIZE, patch: int = PATCH, text_tokens: int = TEXT_TOKENS):
    """Flux RoPE ids: img_ids (tokens, 3) = [0, row, col]; txt_ids zeros (text_tokens, 3)."""
    g = image_size // patch
    ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3).float()
    return img_ids, torch.zeros(text_tokens, 3)


def to_model_range(images01: torch.Tensor) -> torch.Tensor:
    return images01 * 2.0 - 1.0


# ----------------------------------------------------------------------------- classifier

class DigitClassifier(nn.Module):
    """Tiny CNN on 8x8 digits in [0,1] (~98% test accuracy on real digits)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.net(images01 * 2.0 - 1.0)


def load_digits_data():
    """scikit-learn's digits as (images (1797,1,8,8) float in [0,1], labels (1797,) long)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("training needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(d.target, dtype=torch.long)


def train_classifier(seed: int = 0, epochs: int = 30, verbose: bool = False) -> tuple[nn.Module, float]:
    """Train the tiny CNN on digits (few seconds on one CPU core); returns (model, held-out acc).

    Trained on a seeded 80% split with +-1 pixel shift augmentation; accuracy is on the rest.
    """
    images, labels = load_digits_data()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    n_train = int(0.8 * len(labels))
    tr, te = perm[:n_train], perm[n_train:]
    torch.manual_seed(seed)
    clf = DigitClassifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((n_train + 63) // 64))
    for ep in range(epochs):
        clf.train()
        order = tr[torch.randperm(n_train, generator=g)]
        for i in range(0, n_train, 64):
            idx = order[i:i + 64]
            x = images[idx]
            dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(clf(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    clf.eval()
    with torch.no_grad():
        acc = (clf(images[te]).argmax(1) == labels[te]).float().mean().item()
    if verbose:
        print(f"classifier held-out accuracy: {acc:.4f}")
    # final fit includes the held-out part? keep it simple: the split model is what we ship
    return clf, acc


_CACHE: dict = {}


def _read(path: Optional[Path]):
    from safetensors import safe_open

    path = Path(path or WEIGHTS_PATH)
    key = str(path.resolve())
    if key not in _CACHE:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        _CACHE[key] = (tensors, meta)
    return _CACHE[key]


def load_classifier(path: Optional[Path] = None) -> nn.Module:
    """The tiny classifier shipped in the weights file (fp32, eval)."""
    tensors, _ = _read(path)
    clf = DigitClassifier()
    clf.load_state_dict({k[len(CLS_PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(CLS_PREFIX)})
    return clf.eval()


@torch.no_grad()
def classifier_accuracy(images01: torch.Tensor, labels: torch.Tensor, classifier: Optional[nn.Module] = None) -> float:
    """Fraction of images the (shipped) classifier assigns to their requested label."""
    clf = classifier if classifier is not None else load_classifier()
    pred = clf(images01.float()).argmax(1)
    return (pred == labels.to(pred.device)).float().mean().item()


# ----------------------------------------------------------------------------- load / sample

def load_info(path: Optional[Path] = None) -> DigitsInfo:
    tensors, meta = _read(path)
    config = json.loads(meta["config"])
    record = json.loads(meta.get("train", "{}"))
    return DigitsInfo(config=config, class_tokens=tensors[COND_PREFIX + "tokens"].float(),
                      class_pooled=tensors[COND_PREFIX + "pooled"].float(),
                      image_size=int(meta.get("image_size", IMAGE_SIZE)), patch=int(meta.get("patch", PATCH)),
                      null_class=int(meta.get("null_class", NULL_CLASS)), meta=record)


def load_digits_dit(path: Optional[Path] = None) -> tuple[nn.Module, DigitsInfo]:
    """Build the diffusers FluxTransformer2DModel from the shipped config and load the shipped
    weights; returns (model in eval mode, fp32) and its :class:`DigitsInfo`."""
    tensors, _ = _read(path)
    info = load_info(path)
    model = build_model(info.config)
    sd = {k[len(DIT_PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(DIT_PREFIX)}
    model.load_state_dict(sd, strict=True)
    return model.float().eval(), info


def conditioning(info: DigitsInfo, labels: torch.Tensor):
    labels = labels.long().cpu()
    return info.class_tokens[labels], info.class_pooled[labels]


def _device_dtype(model) -> tuple[torch.device, torch.dtype]:
    try:
        p = next(model.parameters())
        return p.device, p.dtype
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu"), torch.float32


@torch.no_grad()
def sample(model, labels: torch.Tensor, steps: int = 20, guidance: float = 3.0, seed: int = 0,
           info: Optional[DigitsInfo] = None, device=None, dtype=None,
           return_latents: bool = False) -> torch.Tensor:
    """Euler rectified-flow sampling from t=1 (noise) to t=0 with batched classifier-free guidance.

    x_t = (1 - t) x0 + t noise; the model predicts v = noise - x0, so x_{t-dt} = x_t - dt v.
    With ``guidance != 1`` each step runs ONE forward on [cond; uncond] (batch 2N) and combines
    v = v_uncond + guidance (v_cond - v_uncond). Returns images (N,1,H,W) clamped to [0,1].
    """
    info = info if info is not None else load_info()
    dev, dt = _device_dtype(model)
    dev = torch.device(device) if device is not None else dev
    dt = dtype or dt
    labels = torch.as_tensor(labels).long().reshape(-1)
    n = labels.numel()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, info.image_size, info.image_size, generator=g)
    x = pack(noise, info.patch).to(dev, dt)
    cfg = guidance != 1.0
    lab = torch.cat([labels, torch.full_like(labels, info.null_class)]) if cfg else labels
    ehs, pooled = conditioning(info, lab)
    ehs, pooled = ehs.to(dev, dt), pooled.to(dev, dt)
    img_ids, txt_ids = make_ids(info.image_size, info.patch, ehs.shape[1])
    img_ids, txt_ids = img_ids.to(dev), txt_ids.to(dev)
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t, t_next = ts[i].item(), ts[i + 1].item()
        inp = torch.cat([x, x]) if cfg else x
        timestep = torch.full((inp.shape[0],), t, device=dev, dtype=dt)
        v = model(hidden_states=inp, timestep=timestep, encoder_hidden_states=ehs, pooled_projections=pooled,
                  img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
        if cfg:
            v_c, v_u = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
        x = x + (t_next - t) * v
    if return_latents:
        return x
    img = unpack(x.float().cpu(), info.image_size, info.patch)
    return ((img + 1.0) / 2.0).clamp(0.0, 1.0)


@torch.no_grad()
def first_block_residual_diffs(model: nn.Module, labels: torch.Tensor, steps: int = 20, guidance: float = 3.0,
                               seed: int = 0, info: Optional[DigitsInfo] = None) -> list[float]:
    """Relative L1 change of transformer_blocks[0]'s image-stream residual (output - input
    hidden_states) between consecutive sampling steps: mean|r_k - r_{k-1}| / mean|r_{k-1}|,
    k = 1..steps-1 (what FBCache/DBCache compare against their threshold)."""
    block = model.transformer_blocks[0]
    residuals: list[torch.Tensor] = []

    def hook(mod, args, kwargs, out):
        hs_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        residuals.append((out[1] - hs_in).detach().float().clone())

    h = block.register_forward_hook(hook, with_kwargs=True)
    try:
        sample(model, labels, steps=steps, guidance=guidance, seed=seed, info=info)
    finally:
        h.remove()
    return [float((residuals[k] - residuals[k - 1]).abs().mean() / residuals[k - 1].abs().mean())
            for k in range(1, len(residuals))]


__all__ = [
    "WEIGHTS_PATH", "MODEL_CONFIG", "DigitsInfo", "DigitClassifier", "ClassConditioner", "build_model",
    "load_digits_dit", "load_info", "load_classifier", "train_classifier", "classifier_accuracy", "sample",
    "first_block_residual_diffs", "pack", "unpack", "make_ids", "load_digits_data",
]
