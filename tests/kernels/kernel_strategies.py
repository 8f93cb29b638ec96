"""Hypothesis strategies and comparison helpers shared by the kernel tests."""

from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Relative tolerance of one rounding to the dtype (half an ulp, with margin).
RTOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# Magnitudes per dtype: tiny (fp16 subnormals), unit, large, huge (fp16 overflows).
SCALES = {
    torch.float32: (1e-30, 1e-3, 1.0, 1e4, 1e30),
    torch.float16: (1e-6, 1e-3, 1.0, 1e3, 3e4),
    torch.bfloat16: (1e-30, 1e-3, 1.0, 1e4, 1e30),
}
LAYOUTS = ("contiguous", "transposed", "sliced")
# Small blocks so tiny tensors still span several programs and a masked tail.
BLOCKS = (16, 32, 64, 128)


@dataclass
class Case:
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str
    scale: float
    seed: int
    special: str  # "none", "nan", "inf"
    block: int

    def make(self, i: int, special: bool = False) -> torch.Tensor:
        """The i-th input tensor: logical ``shape`` in the drawn layout."""
        g = torch.Generator().manual_seed(self.seed * 131 + i)
        s = list(self.shape)
        if self.layout == "transposed" and len(s) >= 2:
            s[0], s[-1] = s[-1], s[0]
            t = (torch.randn(s, generator=g) * self.scale).to(self.dtype).transpose(0, -1)
        elif self.layout in ("sliced", "transposed"):
            s[-1] = 2 * s[-1] + 1
            t = (torch.randn(s, generator=g) * self.scale).to(self.dtype)[..., 1::2]
        else:
            t = (torch.randn(s, generator=g) * self.scale).to(self.dtype)
        assert t.shape == self.shape
        if special and self.special != "none":
            flat_idx = int(torch.randint(0, t.numel(), (1,), generator=g))
            t[np.unravel_index(flat_idx, self.shape)] = float(self.special)
        return t


@st.composite
def cases(draw, max_numel: int = 1500) -> Case:
    ndim = draw(st.integers(1, 3))
    shape = []
    for _ in range(ndim):
        budget = max(1, max_numel // max(1, int(np.prod(shape)) if shape else 1))
        shape.append(draw(st.integers(1, min(budget, 48))))
    dtype = draw(st.sampled_from(DTYPES))
    return Case(
        shape=tuple(shape),
        dtype=dtype,
        layout=draw(st.sampled_from(LAYOUTS)),
        scale=draw(st.sampled_from(SCALES[dtype])),
        seed=draw(st.integers(0, 2**16)),
        special=draw(st.sampled_from(("none", "none", "nan", "inf"))),
        block=draw(st.sampled_from(BLOCKS)),
    )


def bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view of the bytes, for bitwise (determinism) comparisons."""
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(bits(a), bits(b))


def assert_close_dtype(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float,
                       factor: float = 4.0) -> None:
    """NaN where expected is NaN, equal infs, else within a few roundings of ``dtype``;
    ``atol`` is relative to the magnitude ``scale`` of the inputs (cancellation)."""
    rtol = RTOL[dtype] * factor
    fi = torch.finfo(dtype)
    subnormal_step = fi.smallest_normal * fi.eps  # results below smallest_normal are quantised
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale + 2 * subnormal_step,
                               equal_nan=True, check_dtype=False)


def finite_scale(*tensors: torch.Tensor) -> float:
    m = 0.0
    for t in tensors:
        v = t.double()
        v = v[torch.isfinite(v)]
        if v.numel():
            m = max(m, float(v.abs().max()))
    return m


def ratio_policy(num: float, den: float) -> float:
    """The kernels' ratio policy, on float64 sums (naive oracle)."""
    if not (np.isfinite(num) and np.isfinite(den)):
        return float("nan")
    if den == 0:
        return float("inf")
    return num / den
