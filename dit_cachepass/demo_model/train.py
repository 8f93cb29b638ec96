"""Train the shipped digits DiT (rectified flow + classifier-free guidance) and the tiny classifier.

    python -m dit_cachepass.demo_model.train --out dit_cachepass/demo_model/digits_dit.safetensors

Needs scikit-learn (for the digits data set). Seeded; with ``--threads 1`` (the default) two runs
on the same machine give identical weights. The defaults take about 6-7 minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from . import (CLS_PREFIX, COND_PREFIX, DIT_PREFIX, IMAGE_SIZE, MODEL_CONFIG, NULL_CLASS, PATCH, TEXT_TOKENS,
               WEIGHTS_PATH, ClassConditioner, DigitsInfo, build_model, classifier_accuracy,
               first_block_residual_diffs, load_digits_data, make_ids, pack, sample, to_model_range,
               train_classifier)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=128)
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


def train(args) -> dict:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    images, labels = load_digits_data()
    x0_all = pack(to_model_range(images), PATCH)                # (1797, 16, 4) in [-1, 1]
    n = len(labels)

    model = build_model(MODEL_CONFIG).train()
    cond = ClassConditioner(TEXT_TOKENS, MODEL_CONFIG["joint_attention_dim"], MODEL_CONFIG["pooled_projection_dim"])
    params = list(model.parameters()) + list(cond.parameters())
    num_params = sum(p.numel() for p in model.parameters())
    ema_model, ema_cond = copy.deepcopy(model).eval(), copy.deepcopy(cond)
    ema_params = list(ema_model.parameters()) + list(ema_cond.parameters())
    for p in ema_params:
        p.requires_grad_(False)

    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.warmup, args.steps))
    img_ids, txt_ids = make_ids(IMAGE_SIZE, PATCH, TEXT_TOKENS)

    t0 = time.perf_counter()
    order = torch.randperm(n, generator=g)
    pos = 0
    losses = []
    bar = tqdm(range(args.steps), desc="train digits DiT", disable=args.no_progress, dynamic_ncols=True)
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
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * noise
        target = noise - x0
        ehs, pooled = cond(y)
        v = model(hidden_states=xt, timestep=t, encoder_hidden_states=ehs, pooled_projections=pooled,
                  img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
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
    info = DigitsInfo(config=dict(MODEL_CONFIG), class_tokens=ema_cond.tokens.detach().half().float(),
                      class_pooled=ema_cond.pooled.detach().half().float())

    t1 = time.perf_counter()
    clf, clf_acc = train_classifier(seed=args.seed)
    clf_s = time.perf_counter() - t1
    clf = _round_half(clf)

    eval_labels = torch.arange(10).repeat(10)
    samples = sample(ema_model, eval_labels, steps=args.eval_steps, guidance=args.eval_guidance, seed=1234, info=info)
    acc = classifier_accuracy(samples, eval_labels, clf)
    diffs = first_block_residual_diffs(ema_model, torch.arange(10), steps=args.eval_steps,
                                       guidance=args.eval_guidance, seed=1234, info=info)

    record = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema=args.ema, cfg_drop=args.cfg_drop,
                  seed=args.seed, threads=args.threads, train_seconds=round(train_s, 1),
                  classifier_seconds=round(clf_s, 1), final_loss=round(sum(losses[-100:]) / len(losses[-100:]), 4),
                  num_params=num_params, classifier_heldout_acc=round(clf_acc, 4),
                  sample_acc=round(acc, 4), sample_eval=dict(n=len(eval_labels), steps=args.eval_steps,
                                                             guidance=args.eval_guidance, seed=1234),
                  first_block_rel_l1=[round(d, 4) for d in diffs])
    tensors = {DIT_PREFIX + k: v.detach().half().contiguous() for k, v in ema_model.state_dict().items()}
    tensors[COND_PREFIX + "tokens"] = info.class_tokens.half().contiguous()
    tensors[COND_PREFIX + "pooled"] = info.class_pooled.half().contiguous()
    tensors.update({CLS_PREFIX + k: v.detach().half().contiguous() for k, v in clf.state_dict().items()})
    meta = {"config": json.dumps(MODEL_CONFIG), "class": "diffusers.FluxTransformer2DModel",
            "image_size": str(IMAGE_SIZE), "patch": str(PATCH), "null_class": str(NULL_CLASS),
            "text_tokens": str(TEXT_TOKENS), "train": json.dumps(record)}
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    record["file_bytes"] = args.out.stat().st_size
    return record


def warmup_cosine(warmup: int, steps: int):
    """The LR factor: linear warmup, then a cosine from 1 down to 0.1."""
    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))
    return lr_at


def _round_half(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.state_dict().values():
            p.copy_(p.half().float())
    return m


def main(argv=None) -> None:
    args = parse_args(argv)
    record = train(args)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
