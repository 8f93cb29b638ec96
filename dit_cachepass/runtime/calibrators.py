"""Calibrators: on a cached step, predict what the middle would have added instead of
reusing last computed step's residual unchanged. One small class per method, behind one
interface: ``update`` on computed steps, ``forecast`` on cached steps.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import CalibratorConfig, TaylorSeerCalibratorConfig
from ..kernels import taylor_predict_apply, taylor_update
from .calibrator_base import Calibrator, _StreamCalibrator
from .dmd import DMDCalibrator


class TaylorSeerCalibrator(_StreamCalibrator):
    """cache-dit 1.5.3's TaylorSeer: derivative i+1 = (D_i - previous D_i) / gap, where gap is
    the distance to the previous computed step; forecast = sum D_i * d**i / i!.

    cache-dit creates a stream's state lazily inside its first update, so its step counter
    lags the pipeline step by one and its ``current_step > 1`` guard first allows
    derivatives at pipeline step 3. We keep that schedule (``step >= 3``), expressed in
    pipeline steps, so forecasts match cache-dit's step for step.
    """

    FIRST_DERIVATIVE_STEP = 3

    def __init__(self, config: TaylorSeerCalibratorConfig):
        super().__init__(config)
        self.derivs: dict[int, list[Optional[torch.Tensor]]] = {}
        self.last_update: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"TaylorSeerCalibrator(order={self.config.taylorseer_order}, cache_type={self.cache_type!r})"

    def update(self, stream: int, value: torch.Tensor, step: int) -> None:
        order = self.config.taylorseer_order
        prev = self.derivs.get(stream, [None] * (order + 1))
        window = float(step - self.last_update.get(stream, step - 1))
        self.derivs[stream] = taylor_update(value, prev, window, order, step >= self.FIRST_DERIVATIVE_STEP)
        self.last_update[stream] = step

    def forecast(self, stream: int, step: int, base: Optional[torch.Tensor]) -> torch.Tensor:
        return taylor_predict_apply(self.derivs[stream], float(step - self.last_update[stream]), base)


class FoCaCalibrator(_StreamCalibrator):
    """cache-dit 1.5.3's FoCa: F_pred = F_full + e/2 * (dF_full + dF_local), where e = steps since
    the last computed step (anchor F_full), dF_full = slope between the last two computed
    steps and dF_local = slope of the rolling window, which also takes every forecast. Past a
    horizon of 3 steps the forecast is damped towards the anchor. Falls back to plain reuse
    until two computed steps exist."""

    MAX_HORIZON = 3.0

    def __init__(self, config: CalibratorConfig):
        super().__init__(config)
        # per stream: [F_k, F_km1, F_full, F_full_prev, last_full_step]
        self.state: dict[int, list] = {}

    def __repr__(self) -> str:
        return f"FoCaCalibrator(cache_type={self.cache_type!r})"

    def update(self, stream: int, value: torch.Tensor, step: int) -> None:
        f_k, _, f_full, _, _ = self.state.get(stream, [None] * 5)
        if f_k is not None and f_k.shape != value.shape:
            f_k = f_full = None
        self.state[stream] = [value, f_k, value, f_full, step]

    def forecast(self, stream: int, step: int, base: Optional[torch.Tensor]) -> torch.Tensor:
        st = self.state[stream]
        f_k, f_km1, f_full, f_full_prev, last = st
        if f_km1 is None or f_full_prev is None:
            pred = f_full
        else:
            elapsed = float(step - last)
            slope = (f_full - f_full_prev) + (f_k - f_km1)
            if elapsed <= self.MAX_HORIZON:
                pred = f_full + (elapsed / 2.0) * slope
            else:
                w = self.MAX_HORIZON / elapsed
                pred = w * (f_full + (self.MAX_HORIZON / 2.0) * slope) + (1.0 - w) * f_full
            st[0], st[1] = pred, f_k
        return pred + base if base is not None else pred.clone()


def make_calibrator(config: Optional[CalibratorConfig]) -> Optional[Calibrator]:
    if config is None or not (config.enable_calibrator or config.enable_encoder_calibrator):
        return None
    if config.calibrator_type == "taylorseer":
        return TaylorSeerCalibrator(config)
    if config.calibrator_type == "foca":
        return FoCaCalibrator(config)
    if config.calibrator_type == "dmd":
        return DMDCalibrator(config)
    raise ValueError(f"calibrator_type={config.calibrator_type!r} is not supported: "
                     "expected 'taylorseer', 'foca' or 'dmd'.")
