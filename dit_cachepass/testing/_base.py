"""What the zoo's entries are built from: the entry type, the registry and the input helpers
(a module of its own, so that ``zoo`` and the ``zoo_*`` files that add entries both import it,
and not each other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

BATCH = 2   # two samples (like a CFG batch) so batch-dimension mistakes show up
TEXT_LEN = 8


@dataclass
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, int, float], dict]
    block_lists: list[str]
    cache_dit_pattern: dict[str, int]
    graph_breaks: bool = False
    # the sample's shape when it differs from hidden_states' (PixArt predicts learned sigma)
    output_shape: Optional[tuple[int, ...]] = None
    timestep_decreasing: bool = True
    cls_name: str = ""
    config: dict = field(default_factory=dict)
    drift: float = 0.0
    t_span: float = 0.0  # timestep distance covered over num_steps steps (model units)
    # first-block residual relative L1 change between consecutive steps (num_steps=10,
    # noise_scale=1.0), steps 1..9, as measured when the entry was tuned
    measured: tuple[float, ...] = ()
    notes: str = ""
    # coverage-matrix entries (one per diffusers transformer class) are checked by
    # tests/test_coverage.py; the original, hand-tuned entries also by the deeper model tests
    coverage_only: bool = False
    # why this class cannot be cached at all (empty: it must be cached); the coverage test
    # checks that the pass gives this reason
    uncached_reason: str = ""

    def expected_output_shape(self, step: int = 0, num_steps: int = 10) -> tuple[int, ...]:
        if self.output_shape is not None:
            return tuple(self.output_shape)
        return tuple(self.inputs(step, num_steps, 1.0)["hidden_states"].shape)


# ----------------------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _latent(shape, step: int, num_steps: int, noise_scale: float, drift: float, seed: int = 0):
    g = _gen(seed)
    x0 = torch.randn(shape, generator=g)
    d = torch.randn(shape, generator=g)
    return x0 + (drift * noise_scale * step / max(num_steps, 1)) * d


def _text(shape, seed: int = 1):
    return torch.randn(shape, generator=_gen(seed))


def _t(step: int, num_steps: int, noise_scale: float, start: float, span: float, batch: int = BATCH):
    """Timestep going linearly from ``start`` (step 0) towards ``start - span * noise_scale``
    (step num_steps), clamped to the model's range ([0, 1] or [0, 1000])."""
    p = step / max(num_steps, 1)
    top = 1000.0 if start > 1.0 else 1.0
    return torch.full((batch,), min(max(start - span * noise_scale * p, 0.0), top), dtype=torch.float32)


def _perturb_zero_init(model: nn.Module, std: float = 0.02) -> None:
    """Give all-zero parameters small random values. Several classes zero-initialise their
    adaLN / gate / output projections (as training recipes do), so a random-weight block is an
    exact identity and no residual ever changes: nothing could be cached or checked."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)


def _builder(cls_name: str, config: dict, perturb_zero_init: bool = False) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import diffusers

        cls = getattr(diffusers, cls_name)
        torch.manual_seed(0)
        model = cls(**config).eval()
        if perturb_zero_init:
            _perturb_zero_init(model)
        return model

    build.__name__ = f"build_{cls_name}"
    return build


def _flux_img_ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


# ----------------------------------------------------------------------------- entries

ZOO: dict[str, ZooEntry] = {}


def _register(entry: ZooEntry) -> ZooEntry:
    ZOO[entry.name] = entry
    return entry


def get(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo entry {name!r}; known: {sorted(ZOO)}") from None


def _entry(name, cls_name, config, inputs_fn, block_lists, pattern, drift, t_span, measured=(),
           perturb_zero_init=False, **kw) -> ZooEntry:
    return _register(ZooEntry(name=name, build=_builder(cls_name, config, perturb_zero_init),
                              inputs=inputs_fn(drift, t_span),
                              block_lists=list(block_lists), cache_dit_pattern=dict(pattern), cls_name=cls_name,
                              config=dict(config), drift=drift, t_span=t_span, measured=tuple(measured), **kw))
