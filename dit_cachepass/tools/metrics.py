"""Image-quality metrics between a reference folder and a generated folder (same file names):
PSNR and SSIM (torchmetrics), plus LPIPS and FID when their pretrained networks are available
locally (they need weights that torchmetrics / torch-fidelity download on first use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class MetricsReport:
    n_images: int
    psnr: float
    ssim: float
    lpips: Optional[float] = None
    fid: Optional[float] = None
    unavailable: dict = field(default_factory=dict)  # metric -> why it was not computed

    def __str__(self) -> str:
        def fmt(v, unit=""):
            return "n/a" if v is None else f"{v:.4f}{unit}"

        lines = [f"{self.n_images} image pairs", f"PSNR  {fmt(self.psnr, ' dB')}", f"SSIM  {fmt(self.ssim)}",
                 f"LPIPS {fmt(self.lpips)}", f"FID   {fmt(self.fid)}"]
        lines += [f"  {k}: not computed ({v})" for k, v in self.unavailable.items()]
        return "\n".join(lines)


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    found = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not found:
        raise ValueError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def _load(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def load_pairs(ref: Path, gen: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference and generated images matched by file name, as (N, 3, H, W) in [0, 1]."""
    a, b = _images(Path(ref)), _images(Path(gen))
    if set(a) != set(b):
        only_ref, only_gen = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"the folders do not hold the same file names: only in --ref: {only_ref[:5]}"
                         f"{' ...' if len(only_ref) > 5 else ''}; only in --gen: {only_gen[:5]}"
                         f"{' ...' if len(only_gen) > 5 else ''}")
    refs, gens = [], []
    for name in sorted(a):
        x, y = _load(a[name]), _load(b[name])
        if x.shape != y.shape:
            raise ValueError(f"{name}: reference is {tuple(x.shape[1:])}, generated is {tuple(y.shape[1:])}; "
                             "resize one side so both have the same resolution")
        refs.append(x)
        gens.append(y)
    return torch.stack(refs), torch.stack(gens)


def compute(ref: Path, gen: Path, lpips: bool = True, fid: bool = True) -> MetricsReport:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    r, g = load_pairs(ref, gen)
    rep = MetricsReport(len(r), float(peak_signal_noise_ratio(g, r, data_range=1.0)),
                        float(structural_similarity_index_measure(g, r, data_range=1.0)))
    if lpips:
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            m = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
            rep.lpips = float(m(g, r))
        except Exception as err:  # no torchvision / no pretrained weights offline
            rep.unavailable["LPIPS"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    if fid:
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance

            m = FrechetInceptionDistance(normalize=True)
            m.update(r, real=True)
            m.update(g, real=False)
            rep.fid = float(m.compute())
        except Exception as err:
            rep.unavailable["FID"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return rep
