"""Fine-tuning time with every batch at the data's longest row against each batch cut to its
own longest row (config.pad_to_multiple_of), on the same config, data and steps.

    python tools/bench_finetune.py --config=configs/finetune/qnli.py --multiples=0,64,8 \
        --set=init_checkpoint=DIR --set=data_dir=GLUE --set=max_steps=200 --set=eval_every=-1

For each multiple (0: every batch at the data's longest row) it counts what the training
batches hold (the token slots the model computes on, the real tokens among them, and the
distinct batch lengths: one compilation each), then runs `python -m robertax.finetune` in a
fresh process and reports its wall time, the run's own `seconds` (results.json) and its dev
metric. Prints a markdown table; `--output=FILE.json` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glue_sweep  # noqa: E402  (load_config, set_override)

REPO = glue_sweep.REPO


def batch_counts(config, multiples) -> dict[int, dict]:
    """Per multiple: the training run's token slots, real tokens and distinct batch lengths,
    from the batches `robertax.finetune` would feed (same order, same steps)."""
    from robertax import finetune
    p = finetune.prepare(config)
    _, total = finetune.schedule_steps(config, len(p.train["input_ids"]))
    counts = {}
    for asked in multiples:
        with p.config.unlocked():
            p.config.pad_to_multiple_of = asked  # SQuAD: ignored, always the data's length
        slots = real = 0
        lengths = set()
        for batch in finetune.train_batches(p, total):
            mask = batch["attention_mask"]  # [B, ..., L]: the rows the encoder runs on
            weight = batch["weight"].reshape(-1, *[1] * (mask.ndim - 1))
            slots += int(mask.size)
            real += int((mask * (weight > 0)).sum())
            lengths.add(mask.shape[-1])
        counts[asked] = {"steps": total, "token_slots": slots, "real_tokens": real,
                         "lengths": sorted(lengths), "data_length": p.train["input_ids"].shape[-1]}
    return counts


def run(config_path: str, sets, multiple: int, workdir: str) -> dict:
    cmd = [sys.executable, "-m", "robertax.finetune", f"--config={config_path}",
           f"--workdir={workdir}", "--config.progress=False", "--config.overwrite=True",
           f"--config.pad_to_multiple_of={multiple}", *(f"--config.{s}" for s in sets)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return {"wall_s": round(wall, 1), "run_s": results["seconds"], "metric": results["metric"],
            "score": results[results["metric"]]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a configs/finetune/*.py file")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
    ap.add_argument("--multiples", default="0,64,8",
                    help="config.pad_to_multiple_of values (0: the data's longest row)")
    ap.add_argument("--workdir", default="", help="where the runs write (default: a temp dir)")
    ap.add_argument("--output", default="", help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    multiples = [int(m) for m in a.multiples.split(",")]
    config = glue_sweep.load_config(a.config, a.set)
    counts = batch_counts(config, multiples)
    root = a.workdir or tempfile.mkdtemp(prefix="bench_finetune_")
    rows = []
    for m in multiples:
        row = {"pad_to_multiple_of": m, **counts[m]}
        row.update(run(a.config, a.set, m, os.path.join(root, f"pad{m}")))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\n{config.task}, {base['steps']} steps of batch {config.batch_size}, "
          f"data length {base['data_length']}:\n")
    print("| pad_to_multiple_of | batch lengths (compilations) | token slots | real share "
          "| run s | wall s | speed-up (run s) | dev " + base["metric"] + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pad_to_multiple_of']} | {len(r['lengths'])} | {r['token_slots']:,} | "
              f"{r['real_tokens'] / r['token_slots']:.1%} | {r['run_s']} | {r['wall_s']} | "
              f"{base['run_s'] / r['run_s']:.2f}x | {r['score']:.4f} |")
    if a.output:
        with open(a.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
