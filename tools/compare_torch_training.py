"""Train robertax and transformers' RobertaForMaskedLM side by side on the same batches.

    python tools/compare_torch_training.py --config=configs/tiny.py \
        --config.data.corpus=SHARDS --config.model.vocab_size=4096 \
        --config.optim.total_steps=1000 --config.optim.warmup_steps=100 \
        --config.optim.peak_learning_rate=3e-3 [--every=100]

Both models get the config's architecture, dropout and initializer range, the same batches from
the robertax pipeline (FULL-SENTENCES with its masking: the MLM loss on the same positions), and
the same optimizer (AdamW with the config's betas, epsilon, weight decay on every parameter, and
warmup then linear decay). Prints the mean training loss of each per `--every` steps. A
learning-curve difference beyond seed noise points at robertax; a shared plateau is the recipe's.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "tiny.py"),
                                          "Training config (FULL-SENTENCES, float32).")
_EVERY = flags.DEFINE_integer("every", 100, "Steps per printed loss.")


def batches(config):
    from robertax.data import pipeline
    shard_dir = pipeline.resolve_shard_dir(config)
    return pipeline.make_iterator(config.data, shard_dir, "train", batch_size=config.batch_size,
                                  seed=config.data.seed, num_workers=0)


def robertax_losses(config):
    from robertax import sharding, train
    from robertax import step as step_lib
    run = train.build(config, sharding.make_mesh(config.mesh))
    state, rng, it = run.state, train.make_dropout_rng(config), batches(config)
    for _ in range(config.optim.total_steps):
        state, metrics = run.train_step(state, step_lib.device_batch(next(it)), rng)
        yield float(metrics["loss"])


def torch_losses(config):
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    from robertax import convert, train
    o = config.optim
    torch.manual_seed(config.seed)
    hf = convert.hf_config(train.model_config(config), {"mlm_head": None})
    model = RobertaForMaskedLM(RobertaConfig(**hf))
    opt = torch.optim.AdamW(model.parameters(), lr=o.peak_learning_rate, betas=(o.b1, o.b2),
                            eps=o.eps, weight_decay=o.weight_decay)
    total, warm = o.total_steps, o.warmup_steps
    # robertax's schedule at update s (counted from 1): warmup to the peak, then linear to 0.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s - 1) / (total - warm))))
    it = batches(config)
    for _ in range(total):
        b = next(it)
        ids = torch.tensor(b["input_ids"], dtype=torch.long)
        labels = torch.full_like(ids, -100)
        real = b["mlm_weights"] > 0
        rows = np.broadcast_to(np.arange(len(ids))[:, None], real.shape)
        labels[torch.tensor(rows[real]), torch.tensor(b["mlm_positions"][real])] = \
            torch.tensor(b["mlm_targets"][real], dtype=torch.long)
        out = model(input_ids=ids, labels=labels,
                    attention_mask=torch.tensor(b["segment_ids"] != 0, dtype=torch.long),
                    position_ids=torch.tensor(b["position_ids"], dtype=torch.long))
        out.loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        yield out.loss.item()


def main(argv):
    del argv
    config = _CONFIG.value
    if config.data.format != "full_sentences" or config.precision != "float32":
        raise SystemExit("compare in float32 on FULL-SENTENCES (the MLM loss alone)")
    if config.microbatches != 1 or config.optim.grad_clip_norm:
        raise SystemExit("compare with microbatches=1 and no gradient clipping")
    every, curves, seconds = _EVERY.value, {}, {}
    for name, losses in (("robertax", robertax_losses), ("transformers", torch_losses)):
        start, curve = time.perf_counter(), []
        for loss in losses(config):
            curve.append(loss)
        curves[name], seconds[name] = curve, time.perf_counter() - start
    print(f"{'steps':>11}  {'robertax':>9}  {'transformers':>12}   (mean training MLM loss, nats)")
    for s in range(0, config.optim.total_steps, every):
        a, b = (np.mean(curves[k][s:s + every]) for k in ("robertax", "transformers"))
        print(f"{s + 1:>5}-{min(s + every, config.optim.total_steps):<5}  {a:9.3f}  {b:12.3f}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    app.run(main)
