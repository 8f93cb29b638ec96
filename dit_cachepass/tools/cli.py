"""``python -m dit_cachepass`` / ``dit-cachepass``: demo and model inspection."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _demo(args: argparse.Namespace) -> int:
    import time

    from . import demo

    t0 = time.perf_counter()
    demo.hide_unused_packages()  # before diffusers is imported: no torchao import, none of its warnings
    import torch

    torch.set_num_threads(args.threads or demo.choose_threads())
    hint = "Inductor compiles take minutes on CPU" if args.backend == "inductor" else "~1.5-3 min on 2 busy CPU cores"
    print(f"dit_cachepass demo, {torch.get_num_threads()} CPU thread(s): part 1 fidelity (trained model), "
          f"part 2 speed (backend={args.backend}); {hint}", flush=True)
    if args.part in ("all", "digits"):
        out = f"{args.out}/digits.png"
        rows = demo.run_digits(steps=args.digit_steps, out=out, progress=not args.quiet)
        demo.print_digits(rows, args.digit_steps, out)
    if args.part in ("all", "speed"):
        rows = demo.run(steps=args.steps, backend=args.backend, repeats=args.repeats, progress=not args.quiet)
        demo.print_rows(rows, args.steps, args.backend)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
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

    rows = matrix(args.entry or None, progress=not args.quiet, lowering=args.lowering, backend=args.backend)
    text = markdown(rows, args.lowering, args.backend)
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
    d.add_argument("--backend", choices=["inductor", "aot_eager", "eager"], default="aot_eager",
                   help="torch.compile backend of every variant of the speed part (default: aot_eager; "
                        "inductor adds a few minutes of compilation on CPU)")
    d.add_argument("--repeats", type=int, default=5,
                   help="timing rounds of the speed part, every variant once per round (default: 5)")
    d.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: OMP_NUM_THREADS if set, else 1, or 2 when 2 cores are idle)")
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
    c.add_argument("--lowering", choices=["full", "regional"], default="full",
                   help="full: the graph path where it works (default); regional: every class on the block path "
                        "(path='block') with the eager backend, which compiles nothing; with a compiling "
                        "backend, the graph path's regional lowering")
    c.add_argument("--backend", choices=["eager", "aot_eager", "inductor"], default="eager",
                   help="eager (default: fast, checks capture, matching and decisions); aot_eager also "
                        "compiles every piece (and region) through AOTAutograd")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_coverage)

    def _tune(a: argparse.Namespace) -> int:
        from ..tune import run_cli

        return run_cli(a)

    tn = sub.add_parser("tune", help="propose and verify a DBCache threshold / warmup / continuous cap for a "
                                     "target speedup, on the shipped digits model")
    tn.add_argument("--target", type=float, default=2.0, help="target ideal speedup (default: 2.0)")
    tn.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    tn.add_argument("--metric", choices=["steps", "flops"], default="steps",
                    help="steps: steps / computed steps (middle runs); flops: summary().ideal_speedup (default: steps)")
    tn.add_argument("--fn", type=int, default=1, help="Fn_compute_blocks (default: 1)")
    tn.add_argument("--bn", type=int, default=0, help="Bn_compute_blocks (default: 0)")
    tn.add_argument("--per-class", type=int, default=1, help="samples per digit (default: 1)")
    tn.add_argument("--backend", choices=["inductor", "aot_eager", "eager"], default="eager",
                    help="compiler (default: eager; decisions do not depend on it)")
    tn.add_argument("--refine", type=int, default=2, help="extra verify runs if the first falls short (default: 2)")
    tn.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    tn.add_argument("--policies", nargs="+", choices=["dbcache", "planned", "checked"], default=["dbcache"],
                    help="policies to verify; the better verified one wins (default: dbcache)")
    tn.add_argument("--min-psnr", type=float, default=None,
                    help="a quality floor (dB) instead of a speed target: the fastest verified run at or above it, "
                         "searched up to --target")
    tn.add_argument("--plan-evals", type=int, default=0,
                    help="with --metric flops --policies planned: real runs that refine the whole-call plan (default: 0)")
    tn.set_defaults(func=_tune)
    x = sub.add_parser("explain", help="what the pass would cache in a diffusers transformer class, or why not "
                                       "(a tiny random instance, offline)")
    x.add_argument("--model", required=True, help="diffusers class name (e.g. FluxTransformer2DModel) or zoo entry")
    x.add_argument("--tiny", action="store_true", help="a tiny random instance (required: nothing is downloaded)")
    x.add_argument("--fn", type=int, help="Fn_compute_blocks (default: DBCacheConfig's)")
    x.add_argument("--bn", type=int, help="Bn_compute_blocks (default: DBCacheConfig's)")
    x.add_argument("--threshold", type=float, help="residual_diff_threshold (default: DBCacheConfig's)")

    def _explain(a: argparse.Namespace) -> int:
        from ..explain import cli as explain_cli  # dit_cachepass.explain, the module

        return explain_cli(a)
    x.set_defaults(func=_explain)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
