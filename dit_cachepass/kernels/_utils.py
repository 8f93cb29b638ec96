"""Shared helpers for the kernel files: optional Triton import, argument checks.

Triton is optional (macOS and some CPU-only installs have none): without it the
kernel modules still import, their ``@triton.jit`` functions become stubs and the
dispatcher in ``__init__`` only ever picks the torch references.
"""

import os
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    HAS_TRITON = False

    def _missing_jit(fn: Callable | None = None, **_kwargs) -> Callable:
        def wrap(f: Callable) -> Callable:
            def _raise(*_a, **_k):
                raise RuntimeError(f"{f.__name__} needs triton, which is not installed")

            return _raise

        return wrap(fn) if fn is not None else wrap

    triton = SimpleNamespace(jit=_missing_jit, cdiv=lambda a, b: -(-a // b))
    # Kernel signatures annotate with ``tl.constexpr``; it must resolve at def time.
    tl = SimpleNamespace(constexpr=object)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def interpret_enabled() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels then run on CPU tensors (slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def check_nonempty(name: str, t: torch.Tensor) -> None:
    """Reject 0-element tensors: a residual ratio over nothing has no meaning, and a
    grid of 0 programs would silently return uninitialised outputs."""
    if t.numel() == 0:
        raise ValueError(f"{name} has 0 elements (shape {tuple(t.shape)}); the kernels need numel >= 1")


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of float32, float16, bfloat16, float64")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Exact shape match: no broadcasting, a cached residual of another shape is a bug."""
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch: {name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}"
        )


def check_same_device(tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
    first_name, first = tensors[0]
    for name, t in tensors[1:]:
        if t.device != first.device:
            raise ValueError(f"device mismatch: {first_name} on {first.device} but {name} on {t.device}")


def flat_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Launchers index flat memory, so non-contiguous views (transposed, sliced) are
    copied once with ``.contiguous()`` here. Hot-path callers pass block outputs,
    which are already contiguous, so the copy is free for them."""
    return t if t.is_contiguous() else t.contiguous()


def emulate_rne() -> bool:
    """Whether kernels should round fp32 -> bf16 with explicit bit arithmetic.

    Triton's CPU interpreter (TRITON_INTERPRET=1, used by the tests) truncates on
    fp32 -> bf16 casts, while GPUs round to nearest even like torch. With this flag the
    kernels do the RNE rounding by hand so interpreted runs match torch bit for bit;
    compiled GPU kernels keep the native ``cvt.rn`` cast (flag False, no extra ops).
    """
    return interpret_enabled()


@triton.jit
def cast_to(x, out_ptr, EMULATE_RNE: tl.constexpr):
    """Cast fp32 ``x`` to ``out_ptr``'s element type, round-to-nearest-even."""
    if EMULATE_RNE and out_ptr.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)  # canonical quiet NaN, as torch
        y = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        y = x.to(out_ptr.dtype.element_ty)
    return y


@triton.jit
def to_f32(x, EMULATE_RNE: tl.constexpr):
    """Upcast to fp32. Under the interpreter, bf16 goes through the exact bit shift:
    its own converter mangles bf16 subnormals."""
    if EMULATE_RNE and x.dtype == tl.bfloat16:
        y = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        y = x.to(tl.float32)
    return y


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
