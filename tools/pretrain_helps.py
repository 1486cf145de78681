"""Does pretraining help? The whole pipeline at CPU scale, end to end: pretrain a tiny RoBERTa
(`python -m robertax.train`, configs/tiny.py), fine-tune it on an SST-2 subset, score the full
dev set (872 sentences), and compare with the same model fine-tuned from random weights and with
the majority class.

    python tools/pretrain_helps.py --workdir=/tmp/pretrain_helps \
        --corpus=builtin:2000 --corpus=sst2_train_text:1500 --learning_rates=1e-4,3e-4,1e-3

Corpora (each pretrains its own model, same architecture and the built-in corpus's 8192-token
BPE, so only the text differs): `builtin` (Python's docstrings, the default corpus of
robertax.train), `sst2_train_text` (SST-2's training sentences as unlabeled text: in-domain
pretraining; no labels and no dev text are read), or a text file in fairseq's layout;
`NAME:STEPS` sets its pretraining steps (default --pretrain_steps).

Every fine-tuning run, pretrained or from random weights, uses the same recipe (examples, epochs,
batch, seed) at each learning rate of the grid, and each initialization is reported at its best
learning rate by dev accuracy (the same selection for all; the paper's GLUE dev numbers are
also best-of-grid). The tiny model needs larger learning rates than the paper's 1e-5..3e-5.

Every step runs as the command a user would type (printed as it runs; logs in WORKDIR);
finished steps are reused when the tool runs again. Writes WORKDIR/summary.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GLUE = os.path.join(os.environ.get(
    "ROBERTAX_TEST_DATA", os.path.join(os.path.dirname(REPO), "shared", "data")), "glue")
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def sh(cmd: list[str], log: str) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed (exit {done.returncode}); see {log}")


def sst2_text(glue_dir: str, path: str) -> None:
    """The SST-2 training sentences as unlabeled text (labels are not written): one sentence
    a line, 20 sentences a document, documents apart by a blank line (fairseq's layout)."""
    from robertax.tasks import glue
    sentences = [ex.text_a for ex in glue.read_tsv("SST-2", glue_dir, "train")]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(sentences[i:i + 20]) for i in range(0, len(sentences), 20)))
        f.write("\n")


def corpus_flags(args, corpus: str) -> list[str]:
    """robertax.train flags for a pretraining corpus: none for the built-in one; else the text
    preprocessed with the built-in corpus's tokenizer (same vocabulary, other text)."""
    if corpus == "builtin":
        return []
    from robertax.data import builtin
    cache = os.path.expanduser("~/.cache/robertax/builtin")
    tokenizer = os.path.join(builtin.ensure_builtin(cache, vocab_size=8192), "tokenizer")
    name = _name(corpus)
    text = corpus
    if corpus == "sst2_train_text":
        text = os.path.join(args.workdir, "sst2_train_text.txt")
        sst2_text(args.glue_dir, text)
    shards = os.path.join(args.workdir, f"corpus_shards_{name}")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        sh([sys.executable, "-m", "robertax.preprocess", f"--input={text}",
            f"--tokenizer={tokenizer}", f"--output={shards}", "--valid_fraction=0.01",
            "--num_processes=1"], os.path.join(args.workdir, f"preprocess_{name}.log"))
    return [f"--config.data.corpus={shards}"]


def _name(corpus: str) -> str:
    return os.path.splitext(os.path.basename(corpus))[0] if os.sep in corpus else corpus


def pretrain(args, corpus: str, steps: int) -> str:
    workdir = os.path.join(args.workdir, f"pretrain_{_name(corpus)}")
    if not os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
        sh([sys.executable, "-m", "robertax.train", f"--workdir={workdir}",
            *corpus_flags(args, corpus), f"--config.optim.total_steps={steps}",
            f"--config.optim.warmup_steps={max(1, steps // 10)}",
            f"--config.checkpoint_every={steps}", *(args.train_flag or [])],
           os.path.join(args.workdir, f"pretrain_{_name(corpus)}.log"))
    return workdir


def finetune(args, init: str, name: str, lr: float, random_init: bool) -> dict:
    workdir = os.path.join(args.workdir, f"{name}_lr{lr:g}")
    results = os.path.join(workdir, "results.json")
    if not os.path.exists(results):
        sh([sys.executable, "-m", "robertax.finetune", "--config=configs/finetune/sst2.py",
            f"--workdir={workdir}", f"--config.init_checkpoint={init}",
            f"--config.data_dir={args.glue_dir}",
            f"--config.max_train_examples={args.train_examples}",
            f"--config.num_epochs={args.epochs}", f"--config.learning_rate={lr}",
            f"--config.batch_size={args.batch_size}", f"--config.seed={args.seed}",
            f"--config.random_init={random_init}", "--config.progress=False",
            "--config.overwrite=True", *(args.finetune_flag or [])],
           os.path.join(args.workdir, f"{name}_lr{lr:g}.log"))
    with open(results) as f:
        return json.load(f)


def majority(args) -> tuple[float, str]:
    """Dev accuracy of always answering the most frequent label of the training subset."""
    import numpy as np
    from robertax.tasks import glue, runner
    train = runner.subset(glue.read_tsv("SST-2", args.glue_dir, "train"), args.train_examples, 0)
    label = collections.Counter(ex.label for ex in train).most_common(1)[0][0]
    dev = glue.read_tsv("SST-2", args.glue_dir, "validation")
    return float(np.mean([ex.label == label for ex in dev])), glue.TASKS["SST-2"].labels[label]


def main(argv=None):
    floats = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--glue_dir", default=DEFAULT_GLUE)
    p.add_argument("--corpus", action="append",
                   help="builtin | sst2_train_text | a text file; NAME:STEPS (repeat; "
                        "default builtin)")
    p.add_argument("--pretrain_steps", type=int, default=2000)
    p.add_argument("--train_examples", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--learning_rates", type=floats, default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_flag", action="append",
                   help="extra flag for robertax.train, e.g. --train_flag=--config.precision=bfloat16")
    p.add_argument("--finetune_flag", action="append", help="extra flag for robertax.finetune")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)

    corpora = []
    for spec in args.corpus or ["builtin"]:
        name, _, steps = spec.rpartition(":") if ":" in spec else (spec, "", "")
        corpora.append((name, int(steps) if steps else args.pretrain_steps))
    inits = {name: pretrain(args, name, steps) for name, steps in corpora}
    rows = {}  # label -> {lr: accuracy}
    for name, steps in corpora:
        rows[f"pretrained on {name} ({steps} steps)"] = {
            lr: finetune(args, inits[name], f"finetune_{_name(name)}", lr, False)
            for lr in args.learning_rates}
    # Random weights with the same architecture and tokenizer (any of the checkpoints gives them).
    first = inits[corpora[0][0]]
    rows["random init"] = {lr: finetune(args, first, "finetune_random_init", lr, True)
                           for lr in args.learning_rates}
    maj, label = majority(args)
    some = next(iter(rows["random init"].values()))
    summary = {"dev_examples": some["eval_examples"]["dev"],
               "train_examples": some["train_examples"], "epochs": args.epochs,
               "majority": maj, "majority_label": label, "rows": {}}
    for row, by_lr in rows.items():
        accs = {f"{lr:g}": r["accuracy"] for lr, r in by_lr.items()}
        best = max(accs, key=accs.get)
        summary["rows"][row] = {"best": accs[best], "best_lr": float(best), "by_lr": accs}
    random_best = summary["rows"]["random init"]["best"]
    summary["holds"] = {row: r["best"] > max(random_best, maj)
                        for row, r in summary["rows"].items() if row != "random init"}
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    lrs = "  ".join(f"{lr:>7g}" for lr in args.learning_rates)
    lines = [f"SST-2 dev accuracy ({summary['dev_examples']} sentences; fine-tuned on "
             f"{summary['train_examples']} training sentences, {args.epochs} epochs)",
             f"  {'':<44} {'best':>7}   by learning rate: {lrs}"]
    for row, r in summary["rows"].items():
        lines.append(f"  {row:<44} {r['best']:>7.4f}   {'':>17} "
                     + "  ".join(f"{v:>7.4f}" for v in r["by_lr"].values()))
    lines.append(f"  {'majority class (' + repr(label) + ')':<44} {maj:>7.4f}")
    lines += [f"pretraining ({row}) beats random init and majority: {ok}"
              for row, ok in summary["holds"].items()]
    print("\n".join(lines), flush=True)
    return summary


if __name__ == "__main__":
    main()
