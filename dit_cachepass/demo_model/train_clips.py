"""Train the shipped moving-digit clips model (diffusers WanTransformer3DModel, rectified flow + CFG).

    python -m dit_cachepass.demo_model.train_clips --out dit_cachepass/demo_model/clips_wan.safetensors

Needs scikit-learn (for the digits data set). Seeded; with ``--threads 1`` (the default) two runs on the
same machine give identical weights. The defaults take about 12-13 minutes on one CPU core. Quality is
scored with the digits classifier shipped in ``digits_dit.safetensors`` (per frame, max-mass window).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

from . import load_classifier, load_digits_data
from .train import _round_half, warmup_cosine
from .clips import (COND_PREFIX, DIT_PREFIX, FRAMES, HEIGHT, MODEL_CONFIG, NULL_CLASS, TEXT_TOKENS, TIME_SCALE,
                    TRAJECTORIES, WEIGHTS_PATH, WIDTH, ClassTokens, ClipsInfo, build_model, classifier_accuracy,
                    first_block_residual_diffs, make_clips, motion_consistency, sample, to_latents)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the shipped weights")
    p.add_argument("--cfg-drop", type=float, default=0.15, help="probability of replacing the label by the null class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-guidance", type=float, default=3.0)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def all_clips() -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit on every trajectory: latents (1797*T, 1, F, H, W) in [-1,1] and their labels."""
    images, labels = load_digits_data()
    tr = torch.tensor(TRAJECTORIES)
    k = torch.arange(len(tr)).repeat_interleave(len(labels))
    clips = make_clips(images.repeat(len(tr), 1, 1, 1), tr[k, 0], tr[k, 1])
    return to_latents(clips), labels.repeat(len(tr))


def train(args) -> dict:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    x0_all, labels = all_clips()
    n = len(labels)

    model = build_model(MODEL_CONFIG).train()
    cond = ClassTokens(TEXT_TOKENS, MODEL_CONFIG["text_dim"])
    params = list(model.parameters()) + list(cond.parameters())
    num_params = sum(p.numel() for p in model.parameters())
    ema_model, ema_cond = copy.deepcopy(model).eval(), copy.deepcopy(cond)
    ema_params = list(ema_model.parameters()) + list(ema_cond.parameters())
    for p in ema_params:
        p.requires_grad_(False)

    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.warmup, args.steps))

    t0 = time.perf_counter()
    order = torch.randperm(n, generator=g)
    pos = 0
    losses = []
    bar = tqdm(range(args.steps), desc="train clips Wan", disable=args.no_progress, dynamic_ncols=True)
    for step in bar:
        if pos + args.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        x0, y = x0_all[idx], labels[idx].clone()
        b = len(idx)
        y[torch.rand(b, generator=g) < args.cfg_drop] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=g)
        t = torch.sigmoid(torch.randn(b, generator=g))               # logit-normal(0, 1) times
        tb = t[:, None, None, None, None]
        xt = (1 - tb) * x0 + tb * noise
        target = noise - x0
        v = model(hidden_states=xt, timestep=t * TIME_SCALE, encoder_hidden_states=cond(y), return_dict=False)[0]
        loss = nn.functional.mse_loss(v, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        losses.append(loss.item())
        if step % 20 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", lr=f"{sched.get_last_lr()[0]:.1e}")
    train_s = time.perf_counter() - t0

    # shipped weights are the EMA weights, rounded to fp16; evaluate exactly what ships
    ema_model = _round_half(ema_model).eval()
    info = ClipsInfo(config=dict(MODEL_CONFIG), class_tokens=ema_cond.tokens.detach().half().float())

    clf = load_classifier()
    eval_labels = torch.arange(10).repeat(5)
    t1 = time.perf_counter()
    clips = sample(ema_model, eval_labels, steps=args.eval_steps, guidance=args.eval_guidance, seed=1234, info=info)
    sample_s = time.perf_counter() - t1
    acc = classifier_accuracy(clips, eval_labels, clf)
    motion = motion_consistency(clips)
    diffs = first_block_residual_diffs(ema_model, torch.arange(10), steps=args.eval_steps,
                                       guidance=args.eval_guidance, seed=1234, info=info)

    record = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema=args.ema, cfg_drop=args.cfg_drop,
                  seed=args.seed, threads=args.threads, train_seconds=round(train_s, 1),
                  final_loss=round(sum(losses[-100:]) / len(losses[-100:]), 4), num_params=num_params,
                  trajectories=[list(t) for t in TRAJECTORIES], train_clips=n,
                  sample_acc=round(acc, 4), motion_consistency=round(motion, 4), sample_seconds=round(sample_s, 1),
                  sample_eval=dict(n=len(eval_labels), steps=args.eval_steps, guidance=args.eval_guidance, seed=1234,
                                   metric="per-frame digits-classifier accuracy, max-mass 8x8 window"),
                  first_block_rel_l1=[round(d, 4) for d in diffs])
    tensors = {DIT_PREFIX + k: v.detach().half().contiguous() for k, v in ema_model.state_dict().items()}
    tensors[COND_PREFIX + "tokens"] = info.class_tokens.half().contiguous()
    meta = {"config": json.dumps(MODEL_CONFIG), "class": "diffusers.WanTransformer3DModel",
            "frames": str(FRAMES), "height": str(HEIGHT), "width": str(WIDTH), "null_class": str(NULL_CLASS),
            "text_tokens": str(TEXT_TOKENS), "time_scale": str(TIME_SCALE), "train": json.dumps(record)}
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    args.out.chmod(0o644)   # the writer may create it owner-only; a packaged data file must be world-readable
    record["file_bytes"] = args.out.stat().st_size
    return record


def main(argv=None) -> None:
    args = parse_args(argv)
    record = train(args)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
