"""A second small TRAINED diffusers model, of another family and shape: moving-digit video clips.

``WanTransformer3DModel`` (the genuine diffusers video DiT; 6 blocks of self-attention, cross-attention
to the class tokens and a gated FFN, width 96, 3D RoPE) trained with rectified flow on 4-frame clips of
an 8x8 scikit-learn digit sliding 1 px per frame, left or right, across an 8x12 canvas. Latents are the
clips themselves, laid out as Wan's pipeline lays them out, ``(B, C=1, F=4, H=8, W=12)``; patch (1, 2, 2)
makes 4*4*6 = 96 tokens (six times the digits DiT's 16, with a temporal axis), so cache policies are
tuned on two models that differ in family, block structure, token count and dimensionality.
The class is the conditioning: a learned per-class sequence of text tokens (``encoder_hidden_states``);
class 10 is the null class for classifier-free guidance (dropped 15% of the time in training).
Timesteps are passed on Wan's scale, ``1000 * t`` (WanPipeline feeds the flow-match sigmas times 1000).
The fp16 weights, the class tokens and the config live in ``clips_wan.safetensors`` beside this module;
``python -m dit_cachepass.demo_model.train_clips`` rebuilds it. Quality is measured with the digits
classifier shipped with the digits DiT (:func:`dit_cachepass.demo_model.load_classifier`), applied per
frame to the 8x8 window of maximum mass (the window the digit is in, without knowing the trajectory).

Usage::

    model, info = load_clips_wan()
    clips = sample(model, torch.arange(10), steps=20, guidance=3.0, seed=0)   # (10, 4, 1, 8, 12) in [0,1]
    acc = classifier_accuracy(clips, torch.arange(10))                       # per-frame accuracy

``sample`` only calls ``model(hidden_states=..., timestep=..., encoder_hidden_states=...,
return_dict=False)[0]``, so a wrapped or compiled model can be passed in its place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import _read, load_classifier

WEIGHTS_PATH = Path(__file__).with_name("clips_wan.safetensors")

NUM_CLASSES = 10
NULL_CLASS = 10          # index of the unconditional ("dropped label") token sequence
FRAMES = 4
HEIGHT, WIDTH = 8, 12    # canvas; the 8x8 digit moves along the width
DIGIT = 8
TEXT_TOKENS = 4          # length of the per-class encoder_hidden_states sequence
TIME_SCALE = 1000.0      # Wan's timestep scale

# diffusers WanTransformer3DModel config used by train_clips.py (also stored in the file's metadata)
MODEL_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=32, in_channels=1, out_channels=1,
    text_dim=32, freq_dim=64, ffn_dim=256, num_layers=6, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=32,
)

DIT_PREFIX = "dit."
COND_PREFIX = "cond."


def trajectories(frames: int = FRAMES, width: int = WIDTH, digit: int = DIGIT, speed: int = 1) -> list[tuple[int, int]]:
    """All (start column, direction) pairs that keep the digit fully on the canvas for every frame."""
    last = width - digit
    travel = speed * (frames - 1)
    return [(s, d) for d in (1, -1) for s in range(last + 1) if 0 <= s + d * travel <= last]


TRAJECTORIES = trajectories()   # 8x12, 4 frames: right from 0 or 1, left from 3 or 4


@dataclass
class ClipsInfo:
    """Everything besides the transformer needed to sample: class tokens and clip geometry."""

    config: dict
    class_tokens: torch.Tensor      # (11, TEXT_TOKENS, text_dim), row 10 = null class
    frames: int = FRAMES
    height: int = HEIGHT
    width: int = WIDTH
    null_class: int = NULL_CLASS
    time_scale: float = TIME_SCALE
    meta: dict = field(default_factory=dict)   # training record (steps, seed, time, accuracy, ...)

    @property
    def num_params(self) -> int:
        return int(self.meta.get("num_params", 0))


# ----------------------------------------------------------------------------- model and data

def build_model(config: Optional[dict] = None) -> nn.Module:
    from diffusers import WanTransformer3DModel

    cfg = dict(MODEL_CONFIG if config is None else config)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return WanTransformer3DModel(**cfg)


class ClassTokens(nn.Module):
    """Learned per-class token sequence (training-time holder of the table)."""

    def __init__(self, text_tokens: int = TEXT_TOKENS, text_dim: int = 32):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(NUM_CLASSES + 1, text_tokens, text_dim))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.tokens[labels]


def make_clips(digits01: torch.Tensor, starts: torch.Tensor, directions: torch.Tensor, frames: int = FRAMES,
               height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """(N,1,8,8) digits in [0,1] -> (N, F, 1, H, W) clips: frame f has the digit at column start + f*dir."""
    n = digits01.shape[0]
    clips = digits01.new_zeros(n, frames, 1, height, width)
    dh = digits01.shape[-1]
    top = (height - dh) // 2
    for f in range(frames):
        cols = starts + f * directions
        for c in cols.unique().tolist():
            sel = cols == c
            clips[sel, f, :, top:top + dh, c:c + dh] = digits01[sel]
    return clips


def to_latents(clips01: torch.Tensor) -> torch.Tensor:
    """(N, F, 1, H, W) in [0,1] -> Wan layout (N, 1, F, H, W) in [-1,1]."""
    return (clips01 * 2.0 - 1.0).transpose(1, 2).contiguous()


def from_latents(latents: torch.Tensor) -> torch.Tensor:
    return ((latents.float().transpose(1, 2) + 1.0) / 2.0).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- evaluation

def digit_windows(clips01: torch.Tensor, digit: int = DIGIT) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, the digit x digit window of maximum mass (the trajectory is not part of the condition).

    Returns (crops (N*F, 1, digit, digit), columns (N, F))."""
    n, f, c, h, w = clips01.shape
    frames = clips01.reshape(n * f, c, h, w).float()
    top = (h - digit) // 2
    band = frames[:, :, top:top + digit]
    mass = band.sum(dim=(1, 2)).unfold(-1, digit, 1).sum(-1)       # (N*F, w - digit + 1)
    cols = mass.argmax(-1)
    idx = cols[:, None] + torch.arange(digit)                       # (N*F, digit)
    crops = band.gather(3, idx[:, None, None, :].expand(-1, c, digit, -1))
    return crops, cols.reshape(n, f)


@torch.no_grad()
def classifier_accuracy(clips01: torch.Tensor, labels: torch.Tensor, classifier: Optional[nn.Module] = None) -> float:
    """Fraction of FRAMES the shipped digits classifier assigns to their clip's requested label."""
    clf = classifier if classifier is not None else load_classifier()
    crops, _ = digit_windows(clips01)
    pred = clf(crops).argmax(1).reshape(clips01.shape[0], clips01.shape[1])
    return (pred == labels.reshape(-1, 1).to(pred.device)).float().mean().item()


def motion_consistency(clips01: torch.Tensor, tol: float = 0.5) -> float:
    """Fraction of clips whose horizontal centre of mass moves one column per frame, always the same
    way, as in training (centre of mass, not the max-mass window: narrow digits tie between windows)."""
    frames = clips01.float().sum(dim=(2, 3))                          # (N, F, W) column mass
    com = (frames * torch.arange(frames.shape[-1])).sum(-1) / frames.sum(-1).clamp_min(1e-6)
    steps = com[:, 1:] - com[:, :-1]
    d = torch.sign(steps[:, :1])
    ok = ((steps - d).abs() < tol).all(1)
    return ok.float().mean().item()


# ----------------------------------------------------------------------------- load / sample

def load_info(path: Optional[Path] = None) -> ClipsInfo:
    tensors, meta = _read(path or WEIGHTS_PATH)
    return ClipsInfo(config=json.loads(meta["config"]), class_tokens=tensors[COND_PREFIX + "tokens"].float(),
                     frames=int(meta.get("frames", FRAMES)), height=int(meta.get("height", HEIGHT)),
                     width=int(meta.get("width", WIDTH)), null_class=int(meta.get("null_class", NULL_CLASS)),
                     time_scale=float(meta.get("time_scale", TIME_SCALE)), meta=json.loads(meta.get("train", "{}")))


def load_clips_wan(path: Optional[Path] = None) -> tuple[nn.Module, ClipsInfo]:
    """Build the diffusers WanTransformer3DModel from the shipped config and load the shipped
    weights; returns (model in eval mode, fp32) and its :class:`ClipsInfo`."""
    tensors, _ = _read(path or WEIGHTS_PATH)
    info = load_info(path)
    model = build_model(info.config)
    sd = {k[len(DIT_PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(DIT_PREFIX)}
    model.load_state_dict(sd, strict=True)
    return model.float().eval(), info


def _device_dtype(model) -> tuple[torch.device, torch.dtype]:
    try:
        p = next(model.parameters())
        return p.device, p.dtype
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu"), torch.float32


@torch.no_grad()
def sample(model, labels: torch.Tensor, steps: int = 20, guidance: float = 3.0, seed: int = 0,
           info: Optional[ClipsInfo] = None, device=None, dtype=None, return_latents: bool = False) -> torch.Tensor:
    """Euler rectified-flow sampling from t=1 (noise) to t=0 with batched classifier-free guidance.

    x_t = (1 - t) x0 + t noise; the model predicts v = noise - x0, so x_{t-dt} = x_t - dt v.
    With ``guidance != 1`` each step runs ONE forward on [cond; uncond] (batch 2N) and combines
    v = v_uncond + guidance (v_cond - v_uncond). Returns clips (N, F, 1, H, W) clamped to [0,1]
    (or the final latents (N, 1, F, H, W) in model range with ``return_latents``).
    """
    info = info if info is not None else load_info()
    dev, dt = _device_dtype(model)
    dev = torch.device(device) if device is not None else dev
    dt = dtype or dt
    labels = torch.as_tensor(labels).long().reshape(-1)
    n = labels.numel()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, info.frames, info.height, info.width, generator=g).to(dev, dt)
    cfg = guidance != 1.0
    lab = torch.cat([labels, torch.full_like(labels, info.null_class)]) if cfg else labels
    ehs = info.class_tokens[lab.cpu()].to(dev, dt)
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t, t_next = ts[i].item(), ts[i + 1].item()
        inp = torch.cat([x, x]) if cfg else x
        timestep = torch.full((inp.shape[0],), t * info.time_scale, device=dev, dtype=dt)
        v = model(hidden_states=inp, timestep=timestep, encoder_hidden_states=ehs, return_dict=False)[0]
        if cfg:
            v_c, v_u = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
        x = x + (t_next - t) * v
    if return_latents:
        return x
    return from_latents(x.cpu())


@torch.no_grad()
def first_block_residual_diffs(model: nn.Module, labels: torch.Tensor, steps: int = 20, guidance: float = 3.0,
                               seed: int = 0, info: Optional[ClipsInfo] = None) -> list[float]:
    """Relative L1 change of blocks[0]'s residual (output - input hidden_states) between consecutive
    sampling steps: mean|r_k - r_{k-1}| / mean|r_{k-1}|, k = 1..steps-1 (what FBCache/DBCache compare
    against their threshold)."""
    residuals: list[torch.Tensor] = []

    def hook(mod, args, kwargs, out):
        hs_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        residuals.append((out - hs_in).detach().float().clone())

    h = model.blocks[0].register_forward_hook(hook, with_kwargs=True)
    try:
        sample(model, labels, steps=steps, guidance=guidance, seed=seed, info=info)
    finally:
        h.remove()
    return [float((residuals[k] - residuals[k - 1]).abs().mean() / residuals[k - 1].abs().mean())
            for k in range(1, len(residuals))]


__all__ = [
    "WEIGHTS_PATH", "MODEL_CONFIG", "TRAJECTORIES", "ClipsInfo", "ClassTokens", "build_model", "make_clips",
    "to_latents", "from_latents", "digit_windows", "load_clips_wan", "load_info", "classifier_accuracy",
    "motion_consistency", "sample", "first_block_residual_diffs", "trajectories",
]
