"""The calibrator interface and what every calibrator shares (a module of its own: each
calibrator's module builds on it, and ``calibrators.make_calibrator`` imports them all)."""

from __future__ import annotations

from typing import Optional, Protocol

import torch

from ..config import CalibratorConfig


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and device: a stored value still fits a new one."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


class Calibrator(Protocol):
    cache_type: str  # "residual": values are middle residuals; "hidden_states": middle outputs

    def update(self, stream: int, value: torch.Tensor, step: int) -> None: ...

    def forecast(self, stream: int, step: int, base: Optional[torch.Tensor]) -> torch.Tensor: ...

    def calibrates(self, stream: int, hidden: int) -> bool: ...


class _StreamCalibrator:
    """What every calibrator shares: its config, and which streams it forecasts."""

    def __init__(self, config: CalibratorConfig):
        self.config, self.cache_type = config, config.calibrator_cache_type

    def calibrates(self, stream: int, hidden: int) -> bool:
        return self.config.enable_calibrator if stream == hidden else self.config.enable_encoder_calibrator
