"""The coverage matrix: every diffusers transformer class of the zoo, cached or not, and why.

For each entry, one compiled model runs ``EXACT_STEPS + STEPS`` steps: the first ``EXACT_STEPS``
are computed (``steps_computation_mask``) and must equal the eager model (the split never
changes results), and the rest, at a high threshold, must take cached steps (the zoo's inputs
vary slowly: first-block residual changes of ~0.03-0.2 per step, so ``threshold=0.5`` caches).
One compile per class, not one per check: dynamo's capture is most of a tiny model's time.
``python -m dit_cachepass coverage`` prints the table; ``--write docs/coverage.md`` regenerates
the document.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

EXACT_STEPS = 3  # computed steps compared with eager
STEPS = 5  # then steps that may cache
THRESHOLD = 0.5

# diffusers 0.42.1 transformer classes with a block list that have no zoo entry, and why
NOT_IN_MATRIX = {
    "WanAnimate2Transformer3DModel": "per-sample list inputs and a KV cache filled by a separate extract "
                                     "pass; not built tiny yet",
    "Cosmos3OmniTransformer": "packed multimodal sequences (vision token lists, mRoPE position ids) "
                              "and a list output; not built tiny yet",
    "PriorTransformer": "not a diffusion transformer over latents (unCLIP prior)",
    "T5FilmDecoder": "not a DiT (spectrogram decoder)",
    "TransformerTemporalModel": "a temporal layer inside UNets, not a denoiser",
    "MiniMaxMusic3RVQDepthDecoder": "an RVQ depth decoder, not a denoiser",
    "RFD4ProteinaTransformer": "a protein structure model, not a latent denoiser",
}


@dataclass
class CoverageRow:
    entry: str
    cls_name: str
    path: str  # "graph", "graph (scalar/dynamic-output capture)", "block", or "-"
    loops: list[str]
    patterns: dict[str, int]
    exact: bool  # the computed first steps equal eager
    cached_steps: int
    status: str  # "cached" or "uncached: <reason>"
    seconds: float = 0.0

    @property
    def cached(self) -> bool:
        return self.status == "cached"


def _sample(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        first = out[0]
        if isinstance(first, (tuple, list)):  # Z-Image: a list of per-sample tensors
            return torch.stack(list(first))
        if isinstance(out, list) and all(isinstance(o, torch.Tensor) for o in out) and len(out) > 1:
            return torch.stack(out)
        return first
    return out.sample


def _run(model: torch.nn.Module, entry: Any, steps: int, total: Optional[int] = None) -> list[torch.Tensor]:
    """The first ``steps`` steps of a ``total``-step schedule (default: all of them)."""
    with torch.no_grad():
        return [_sample(model(**entry.inputs(s, total or steps, 1.0), return_dict=False)).clone()
                for s in range(steps)]


def _config(entry: Any, threshold: float):
    from .. import DBCacheConfig

    return DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                         max_warmup_steps=1, steps_computation_mask=[1] * EXACT_STEPS + [0] * STEPS)


def check(entry: Any, backend: str = "eager", lowering: str = "full") -> CoverageRow:
    """Run the two checks on one zoo entry (tiny model, CPU, a few seconds)."""
    import dit_cachepass as dcp

    start = time.perf_counter()
    total = EXACT_STEPS + STEPS
    ref = _run(entry.build(), entry, EXACT_STEPS, total)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # regional on the graph path differs from full only in what gets compiled (nothing on the
        # eager backend): there "regional" checks the block path, every block wrapped on its own
        model = dcp.compile(entry.build(), _config(entry, THRESHOLD), backend=backend, lowering=lowering,
                            path="block" if lowering == "regional" and backend == "eager" else "auto")
        outs = _run(model, entry, total)
    exact = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(ref, outs))
    session = model._dit_cachepass
    summary = dcp.summary(model)
    loops = [lp.name for lp in summary.loops]
    patterns = {k: int(v) for g in session.graphs for lp in g.loops for k, v in lp.loop.patterns.items()}
    cached = sum(len(lp.cached_steps) for lp in summary.loops)
    finite = all(torch.isfinite(o).all() for o in outs)
    if not loops:
        msgs = [str(w.message) for w in caught if "dit_cachepass" in str(w.message)]
        status = "uncached: " + (msgs[0].replace("dit_cachepass: ", "") if msgs else "no loop found")
    elif not exact:
        status = "uncached: computed steps differ from eager"
    elif not cached:
        status = f"uncached: no step cached at threshold {THRESHOLD}"
    elif not finite:
        status = "uncached: non-finite output on cached steps"
    else:
        status = "cached"
    path = session.paths.name if loops and session.paths is not None else "-"
    return CoverageRow(entry.name, entry.cls_name, path, loops, patterns, exact, cached, status,
                       time.perf_counter() - start)


def matrix(names: Optional[list[str]] = None, progress: bool = True, lowering: str = "full",
           backend: str = "eager") -> list[CoverageRow]:
    """``check`` every zoo entry (``names``: a subset) with ``backend``; ``lowering="regional"``
    checks the block path (``path="block"``) on the eager backend, which compiles nothing, and
    the graph path's regional lowering (``outline``) on a compiling one."""
    from ..testing.zoo import ZOO

    names = sorted(ZOO) if names is None else names
    rows = []
    iterator: Any = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="coverage", unit="class")
    for n in iterator:
        try:
            rows.append(check(ZOO[n], backend=backend, lowering=lowering))
        except Exception as err:  # noqa: BLE001 - a crash is a row, not the end of the table
            rows.append(CoverageRow(n, ZOO[n].cls_name, "-", [], {}, False, 0, f"crash: {type(err).__name__}: {err}"))
    return rows


def _flags(lowering: str, backend: str) -> str:
    """The command-line flags that make this table, with the file name it is kept under."""
    changed = [(k, v) for k, v, default in (("backend", backend, "eager"), ("lowering", lowering, "full"))
               if v != default]
    name = "_".join(["coverage"] + [v for _, v in changed]) + ".md"
    return "".join(f" --{k} {v}" for k, v in changed) + f" --write docs/{name}"


def markdown(rows: list[CoverageRow], lowering: str = "full", backend: str = "eager") -> str:
    import diffusers

    cached = sum(r.cached for r in rows)
    by_path: dict[str, int] = {}
    for r in rows:
        if r.cached:
            by_path[r.path] = by_path.get(r.path, 0) + 1
    lines = [
        "# Coverage: diffusers transformer classes",
        "",
        "Whole pipelines (diffusers' own pipeline fast-test fixtures through `dcp.enable_cache`): "
        "`docs/conformance.md`, `make conformance`.",
        "",
        f"Generated by `python -m dit_cachepass coverage{_flags(lowering, backend)}` (diffusers {diffusers.__version__}, "
        f"torch {torch.__version__.split('+')[0]}, CPU, {backend} backend"
        f"{', lowering=' + repr(lowering) if lowering != 'full' else ''}). Each class is a tiny real diffusers model "
        "from `dit_cachepass/testing/zoo*.py` (random weights, slowly varying inputs), compiled once and run "
        f"{EXACT_STEPS + STEPS} steps. *exact*: its first {EXACT_STEPS} steps, computed (steps_computation_mask), "
        f"equal the eager model; *cached*: cached steps (summed over the loops) in the {STEPS} steps after them at "
        f"threshold {THRESHOLD} (F1B0).",
        "",
        f"**{cached} of {len(rows)} classes cached** "
        f"({', '.join(f'{v} on the {k} path' for k, v in sorted(by_path.items()))}).",
        "",
        "| class | entry | path | loops | patterns | exact | cached | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r.cls_name):
        pats = ", ".join(f"P{v}" for v in r.patterns.values()) or "-"
        lines.append(f"| {r.cls_name} | {r.entry} | {r.path} | {', '.join(r.loops) or '-'} | {pats} | "
                     f"{'yes' if r.exact else 'no'} | {r.cached_steps} | {r.status} |")
    covered = {r.cls_name for r in rows}
    missing = {k: v for k, v in NOT_IN_MATRIX.items() if k not in covered}
    if missing:
        lines += ["", "Not in the matrix:", ""] + [f"- {k}: {v}" for k, v in sorted(missing.items())]
    return "\n".join(lines) + "\n"
