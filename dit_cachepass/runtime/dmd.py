"""DMD calibrator: forecast a stream by dynamic mode decomposition of its last computed steps."""

from __future__ import annotations

from typing import Optional

import torch

from ..config import DMDCalibratorConfig
from .calibrator_base import _StreamCalibrator, same_layout

MIN_SNAPSHOTS = 4  # 3 snapshot pairs: the least that pins down one damped, oscillating mode
RANK_CUTOFF = 1e-4  # rank 0: keep singular values above this fraction of the largest
LOWRANK_SEED = 0

# per batch item: (modes [d, r], eigenvalues [r], amplitudes [r]), all complex128
_Fit = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class DMDCalibrator(_StreamCalibrator):
    """cache-dit 1.5.3's DMD calibrator (dynamic mode decomposition; not distillation).

    What it forecasts: the middle's residual (or output) at a cached step, from the values of
    the last ``dmd_history`` computed steps. Why DMD: across denoising steps these values
    evolve nearly linearly, ``Y_{j+1} ~ A Y_j``, so locally they are sums of damped or
    oscillating exponentials. DMD finds the few dominant eigenvalues of ``A`` from an SVD of
    the snapshot window and extrapolates with their powers, which follows decay, growth and
    oscillation over longer gaps where a Taylor polynomial drifts off.

    Per stream and per batch item (items never mix): take the longest evenly spaced run of
    the newest snapshots (spacing s, at least ``MIN_SNAPSHOTS`` of them, else TaylorSeer of
    order 1, see ``_taylor``); SVD of the older snapshots (rank ``dmd_rank`` or the
    1e-4 cut), ``1 / (sigma + dmd_ridge)`` as inverse singular values, eigenvalues of the
    projected propagator, exact DMD modes, amplitudes fitted to the newest snapshot by least
    squares. A gap of e steps is ``k = e / s`` propagator steps (fractional allowed):
    ``Re(modes @ (lambda**k * amplitudes))``. Fits run in float64 (complex128) and are cast to
    the stream's dtype; a failed SVD/eig/solve or a non-finite forecast (after the cast)
    reuses the newest snapshot. One fit per window, reused by the window's cached steps.

    State (per-stream dicts of lists/tensors, so ``LoopState.snapshot`` copies it): the
    snapshots ``(step, value)``, the step the stream (re)started at, and the current fit.
    """

    def __init__(self, config: DMDCalibratorConfig):
        super().__init__(config)
        self.snaps: dict[int, list[tuple[int, torch.Tensor]]] = {}
        self.origin: dict[int, int] = {}  # step of the stream's first update (after a layout change)
        self.fits: dict[int, Optional[_Fit]] = {}  # present: fitted on the current window (None: failed)

    def __repr__(self) -> str:
        c = self.config
        return (f"DMDCalibrator(history={c.dmd_history}, rank={c.dmd_rank}, ridge={c.dmd_ridge}, "
                f"svd_precision={c.dmd_svd_precision!r}, cache_type={self.cache_type!r})")

    def update(self, stream: int, value: torch.Tensor, step: int) -> None:
        old = self.snaps.get(stream, [])
        if old and not same_layout(old[-1][1], value):
            old = []  # another shape/dtype/device: start over, as cache-dit does on a shape change
        if not old:
            self.origin[stream] = step
        # the Taylor fallback needs the previous snapshot even when dmd_history is 1
        self.snaps[stream] = (old + [(step, value)])[-max(self.config.dmd_history, 2):]
        self.fits.pop(stream, None)

    def forecast(self, stream: int, step: int, base: Optional[torch.Tensor]) -> torch.Tensor:
        snaps = self.snaps[stream]
        last_step, last = snaps[-1]
        run, spacing = self._even_run(snaps)
        if len(run) < MIN_SNAPSHOTS:
            pred = self._taylor(stream, step)
        else:
            if stream not in self.fits:
                self.fits[stream] = _fit(run, self.config)
            fit = self.fits[stream]
            pred = _advance(fit, (step - last_step) / spacing, last) if fit is not None else None
            if pred is None:
                pred = last
        if base is not None:
            return pred + base
        return pred.clone() if pred is last else pred

    def _even_run(self, snaps: list[tuple[int, torch.Tensor]]) -> tuple[list[torch.Tensor], int]:
        """The newest snapshots (within ``dmd_history``) at one constant spacing, oldest first."""
        window = snaps[-self.config.dmd_history:]
        if len(window) < 2 or window[-1][0] <= window[-2][0]:
            return [], 0
        spacing, n = window[-1][0] - window[-2][0], 2
        while n < len(window) and window[-n][0] - window[-n - 1][0] == spacing:
            n += 1
        return [v for _, v in window[-n:]], spacing

    def _taylor(self, stream: int, step: int) -> torch.Tensor:
        """Order-1 TaylorSeer in the stored dtype, with its schedule: the slope exists from the
        3rd step after the stream started (cache-dit's lagging ``current_step > 1`` guard). The
        slope spans the last two computed steps, as TaylorSeer's does; cache-dit's DMD fallback
        spans the last three (docs/differences_from_cache_dit.md)."""
        snaps = self.snaps[stream]
        (s1, y1), gap = snaps[-1], step - snaps[-1][0]
        if len(snaps) < 2 or s1 - self.origin[stream] < 3:
            return y1
        s0, y0 = snaps[-2]
        return y1 + (y1 - y0) / (s1 - s0) * gap


def _fit(run: list[torch.Tensor], config: DMDCalibratorConfig) -> Optional[_Fit]:
    """One DMD fit per batch item (dim 0 when the values have more than one dim)."""
    items = run[-1].shape[0] if run[-1].dim() > 1 else 1
    trajs = torch.stack([v.reshape(items, -1) for v in run], dim=-1).to(torch.float64)  # [items, d, n]
    fits = []
    for traj in trajs:
        f = _fit_item(traj, config.dmd_rank, config.dmd_ridge, config.dmd_svd_precision)
        if f is None:
            return None
        fits.append(f)
    return fits


def _fit_item(traj: torch.Tensor, rank: int, ridge: float, precision: str):
    past, future = traj[:, :-1], traj[:, 1:]
    try:
        u, sigma, vh = _svd(past, precision)
        r = rank if rank > 0 else max(1, int((sigma > sigma[0] * RANK_CUTOFF).sum()))
        r = min(r, sigma.numel())
        u, v = u[:, :r], vh[:r].mH
        inv_sigma = (1.0 / (sigma[:r] + ridge)).to(torch.complex128)
        future_v = future @ v  # [d, r]
        propagator = (u.mH @ future_v).to(torch.complex128) * inv_sigma  # U* A U, [r, r]
        evals, evecs = torch.linalg.eig(propagator)
        modes = (future_v.to(torch.complex128) * inv_sigma) @ evecs
        newest = traj[:, -1].to(torch.complex128).unsqueeze(1)
        amps = torch.linalg.lstsq(modes, newest).solution.squeeze(1)
    except RuntimeError:  # torch.linalg failures (LinAlgError is one): no fit, reuse the newest value
        return None
    return modes, evals, amps


def _svd(x: torch.Tensor, precision: str):
    """Economy SVD ``(U, S, Vh)`` of the tall ``[d, n]`` snapshot matrix."""
    if precision == "low":  # randomised, q = n, one power iteration, a fixed seed on x's device only
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
            if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if devices:
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(LOWRANK_SEED)
            else:
                torch.random.default_generator.manual_seed(LOWRANK_SEED)
            u, s, v = torch.svd_lowrank(x, q=x.shape[-1], niter=1)
        return u, s, v.mH
    driver = "gesvd" if precision == "high" and x.device.type == "cuda" else None  # driver= is CUDA-only
    return torch.linalg.svd(x, full_matrices=False, driver=driver)


def _advance(fit: _Fit, k: float, like: torch.Tensor) -> Optional[torch.Tensor]:
    """``k`` propagator steps past the newest snapshot, in ``like``'s dtype and shape; None when
    not finite in that dtype (a finite float64 value can overflow fp16)."""
    rows = [(modes @ (evals ** k * amps)).real for modes, evals, amps in fit]
    out = torch.stack(rows).to(like.dtype).reshape(like.shape)
    return out if bool(torch.isfinite(out).all()) else None
