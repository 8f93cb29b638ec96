"""Roofline *projection* (not measured): each kernel's bandwidth floor at FLUX.1-dev shapes on
H100 SXM / H200 next to a FLUX.1-dev step's compute floor, so the kernel overhead fraction is
visible without a GPU. The arithmetic (and which tensors each op reads and writes) lives in
``dit_cachepass.kernels.roofline``; ``python -m dit_cachepass.kernels.aot --roofline`` prints
the same table after the AOT compile table.

    python benchmarks/roofline.py
"""

from dit_cachepass.kernels.roofline import print_projection

if __name__ == "__main__":
    print_projection()
