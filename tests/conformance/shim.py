"""Stand-ins for the upstream test helpers the vendored fixtures import.

Why: the fixtures import ``..test_pipelines_common``, ``...testing_utils``, ``..pipeline_params`` etc. from
diffusers' test tree, which is not installed. The conformance runner only needs ``pipeline_class``,
``get_dummy_components`` and ``get_dummy_inputs``, so mixins are empty, decorators are no-ops and the few
helpers that fixture *construction* touches (``torch_device``, ``floats_tensor``, ``get_generator`` ...)
behave like upstream. Any other name resolves via ``__getattr__`` to a harmless stub.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from .fixtures.pipeline_params import *  # noqa: F403  (upstream's param-name sets, vendored verbatim)

torch_device = "cpu"
IS_GITHUB_ACTIONS = False


def enable_full_determinism() -> None:
    """Upstream sets deterministic algorithms; CPU runs are deterministic already (and the runner seeds)."""
    torch.use_deterministic_algorithms(False)


def floats_tensor(shape, scale: float = 1.0, rng: random.Random | None = None, name=None) -> torch.Tensor:
    """Same as diffusers' testing_utils.floats_tensor (Python RNG, so fixtures are reproducible)."""
    rng = rng or random.Random()
    total = int(np.prod(shape))
    return torch.tensor([rng.random() * scale for _ in range(total)], dtype=torch.float).view(tuple(shape)).contiguous()


def to_np(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t


def assert_tensors_close(a, b, atol: float = 1e-5, rtol: float = 1e-5, msg: str = "") -> None:
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=atol, rtol=rtol, msg=msg or None)


def numpy_cosine_similarity_distance(a, b) -> float:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    return float(1.0 - (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def backend_empty_cache(*_a, **_k) -> None:
    return None


backend_synchronize = backend_empty_cache


def _decorator(*args, **kwargs):
    """No-op usable both as ``@deco`` and ``@deco(...)``."""
    if len(args) == 1 and not kwargs and (callable(args[0]) or isinstance(args[0], type)):
        return args[0]
    return lambda obj: obj


skip_mps = slow = nightly = is_flaky = _decorator


class Expectations(dict):
    def get_expectation(self):
        return next(iter(self.values()), None)


# ---- new-style (tests/pipelines/testing_utils) base: only what constructing fixtures needs ----
class BasePipelineTesterConfig:
    """Mirror of upstream's config base: fixtures call ``self.get_generator(seed)`` in ``get_dummy_inputs``."""

    def get_generator(self, seed: int = 0) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(seed)


class PipelineTesterMixin:
    """Only upstream's class attributes that fixtures reference; the runner does its own checks."""

    required_optional_params = frozenset(
        ["num_inference_steps", "num_images_per_prompt", "generator", "latents", "output_type", "return_dict"]
    )


_MIXINS: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """Fallback for helper names not modelled above: mixins -> empty classes, decorators/predicates -> no-ops,
    UPPER_CASE param sets -> frozenset(), anything else -> a function that raises when *called* (so a fixture
    that really needs it fails loudly, but merely importing it does not)."""
    if name.startswith("__"):
        raise AttributeError(name)
    if name.endswith("Mixin"):
        return _MIXINS.setdefault(name, type(name, (), {}))
    if name.startswith(("require_", "skip", "is_", "slow", "nightly")):
        return _decorator
    if name.isupper():
        return frozenset()

    def _missing(*_a, **_k):
        raise NotImplementedError(f"tests.conformance.shim: upstream helper {name!r} is not available")

    _missing.__name__ = name
    return _missing
