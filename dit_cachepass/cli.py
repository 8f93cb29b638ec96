"""``python -m dit_cachepass`` / ``dit-cachepass``: demo and model inspection."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.part in ("all", "digits"):
        out = f"{args.out}/digits.png"
        demo.print_digits(demo.run_digits(steps=args.digit_steps, out=out), args.digit_steps, out)
    if args.part in ("all", "speed"):
        rows = demo.run(steps=args.steps, backend=args.backend, repeats=args.repeats, progress=not args.quiet)
        demo.print_rows(rows, args.steps, args.backend)
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from .metrics import compute

    try:
        report = compute(args.ref, args.gen, lpips=not args.no_lpips, fid=not args.no_fid)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


def _coverage(args: argparse.Namespace) -> int:
    from .coverage import markdown, matrix

    rows = matrix(args.entry or None, progress=not args.quiet)
    text = markdown(rows)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
        print(f"wrote {args.write}")
    print(text)
    return 0 if all(r.cached or r.status.startswith("uncached") for r in rows) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dit-cachepass", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="denoise an embedded FLUX-shaped model with and without the cache")
    d.add_argument("--part", choices=["all", "digits", "speed"], default="all",
                   help="digits: fidelity on the shipped trained model; speed: wall time on a FLUX-shaped model")
    d.add_argument("--out", default="demo_out", help="folder for the sample grids (default: demo_out)")
    d.add_argument("--digit-steps", type=int, default=20, help="sampling steps of the digits part (default: 20)")
    d.add_argument("--steps", type=int, default=20, help="denoising steps of the speed part (default: 20)")
    d.add_argument("--backend", choices=["inductor", "aot_eager", "eager"], default="inductor",
                   help="compiler for every variant (default: inductor)")
    d.add_argument("--repeats", type=int, default=3, help="timed generations per variant; median reported")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo)
    m = sub.add_parser("metrics", help="PSNR / SSIM / LPIPS / FID between two folders of images")
    m.add_argument("--ref", required=True, help="folder of reference images (e.g. no cache)")
    m.add_argument("--gen", required=True, help="folder of generated images with the same file names")
    m.add_argument("--no-lpips", action="store_true", help="skip LPIPS (needs pretrained AlexNet weights)")
    m.add_argument("--no-fid", action="store_true", help="skip FID (needs pretrained Inception weights)")
    m.set_defaults(func=_metrics)
    c = sub.add_parser("coverage", help="which diffusers transformer classes are cached, by which path (tiny models)")
    c.add_argument("entry", nargs="*", help="zoo entry names (default: all)")
    c.add_argument("--write", metavar="PATH", help="also write the markdown table to PATH (e.g. docs/coverage.md)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_coverage)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
