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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
