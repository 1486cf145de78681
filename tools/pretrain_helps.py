"""Does pretraining help? The whole pipeline at CPU scale, end to end: pretrain a tiny RoBERTa
(`python -m robertax.train`, configs/tiny.py), fine-tune it on SST-2 training subsets, score the
full dev set (872 sentences), and compare with the same model fine-tuned from random weights and
with the majority class.

    python tools/pretrain_helps.py --workdir=/tmp/pretrain_helps \
        --corpus=sst2_train_text+enwiki:6000 --train_examples=1000,4000

Corpora (each pretrains its own model; join several with `+`; `NAME:STEPS` sets the pretraining
steps, default --pretrain_steps):
  builtin          Python's docstrings, the default corpus of robertax.train
  sst2_train_text  SST-2's training sentences as unlabeled text (in-domain pretraining: no labels
                   and no dev text are read), 20 sentences a document
  enwiki           ../shared/data/text/enwiki-excerpt (103 English Wikipedia articles)
  PATH             a text file in fairseq's layout
Tokenizer (--tokenizer): "corpus" trains a byte-level BPE of --vocab_size on the pretraining text
itself (`python -m robertax.tokenizer train`); "builtin" uses the built-in corpus's BPE.

Every fine-tuning run, pretrained or from random weights, uses the same recipe (examples, epochs,
batch) at each learning rate of the grid and each seed of --seeds (a seed sets the head's or the
random weights' initialization and the example order; the training subset is the same for all);
the random-weights baseline has the pretrained model's architecture and tokenizer. Each
initialization is reported at its best learning rate by the median dev accuracy over the seeds
(the same selection for all; the paper's GLUE dev numbers are also medians at the best setting),
with every seed's accuracy beside it.
The tiny model needs larger learning rates than the paper's 1e-5..3e-5, in pretraining too.

Every step runs as the command a user would type (printed as it runs; logs in WORKDIR);
finished steps are reused when the tool runs again with the same command (each step's
command.json records it: a fine-tuning run of other settings runs again, a pretraining workdir
of other settings is refused). Writes WORKDIR/summary.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ROBERTAX_TEST_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
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


def _name(corpus: str) -> str:
    return "+".join(os.path.splitext(os.path.basename(part))[0] if os.sep in part else part
                    for part in corpus.split("+"))


def text_files(args, corpus: str) -> list[str]:
    files = []
    for part in corpus.split("+"):
        if part == "sst2_train_text":
            path = os.path.join(args.workdir, "sst2_train_text.txt")
            if not os.path.exists(path):
                sst2_text(args.glue_dir, path)
            files.append(path)
        elif part == "enwiki":
            files.append(os.path.join(DATA, "text", "enwiki-excerpt", "articles.txt"))
        elif os.path.isfile(part):
            files.append(os.path.abspath(part))
        else:
            raise SystemExit(f"--corpus: {part!r} is not builtin, sst2_train_text, enwiki or a file")
    return files


def corpus_flags(args, corpus: str) -> list[str]:
    """robertax.train flags for a pretraining corpus: none for the built-in one; else the text
    preprocessed with the chosen tokenizer."""
    if corpus == "builtin":
        if args.tokenizer != "builtin":
            raise SystemExit("--corpus=builtin ships its own tokenizer: use --tokenizer=builtin")
        return []
    name, files = _name(corpus), text_files(args, corpus)
    if args.tokenizer == "builtin":
        from robertax.data import builtin
        cache = os.path.expanduser(os.environ.get("ROBERTAX_CACHE", "~/.cache/robertax"))
        tokenizer = os.path.join(builtin.ensure_builtin(os.path.join(cache, "builtin"),
                                                        vocab_size=8192), "tokenizer")
    else:
        tokenizer = os.path.join(args.workdir, f"tokenizer_{name}")
        if not os.path.exists(os.path.join(tokenizer, "vocab.json")):
            sh([sys.executable, "-m", "robertax.tokenizer", "train", "--input=" + ",".join(files),
                f"--vocab_size={args.vocab_size}", f"--output={tokenizer}"],
               os.path.join(args.workdir, f"tokenizer_{name}.log"))
    shards = os.path.join(args.workdir, f"corpus_shards_{name}")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        sh([sys.executable, "-m", "robertax.preprocess", "--input=" + ",".join(files),
            f"--tokenizer={tokenizer}", f"--output={shards}", "--valid_fraction=0.01",
            "--num_processes=1"], os.path.join(args.workdir, f"preprocess_{name}.log"))
    return [f"--config.data.corpus={shards}", f"--config.model.vocab_size={args.vocab_size}"]


COMMAND = "command.json"  # in each run's workdir: the command that made it


def recorded_command(workdir: str) -> list[str] | None:
    path = os.path.join(workdir, COMMAND)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def record_command(workdir: str, cmd: list[str]) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, COMMAND), "w") as f:
        json.dump(cmd, f, indent=1)


def pretrain(args, corpus: str, steps: int) -> str:
    """The pretraining workdir, trained here unless it already holds this command's run. A
    workdir made by another command is refused: resuming it would mix two recipes."""
    workdir = os.path.join(args.workdir, f"pretrain_{_name(corpus)}")
    cmd = [sys.executable, "-m", "robertax.train", f"--workdir={workdir}",
           *corpus_flags(args, corpus), f"--config.optim.total_steps={steps}",
           f"--config.optim.warmup_steps={max(1, steps // 10)}",
           f"--config.optim.peak_learning_rate={args.pretrain_lr}",
           f"--config.checkpoint_every={steps}", f"--config.eval_every={max(1, steps // 6)}",
           "--config.eval_batches=16", *(args.train_flag or [])]
    have = recorded_command(workdir)
    if have is not None and have[1:] != cmd[1:]:  # (the interpreter's path may differ)
        raise SystemExit(f"{workdir} was pretrained by another command:\n  {shlex.join(have)}\n"
                         f"this one is\n  {shlex.join(cmd)}\nuse another --workdir")
    if not os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
        record_command(workdir, cmd)
        sh(cmd, os.path.join(args.workdir, f"pretrain_{_name(corpus)}.log"))
    elif have is None:
        print(f"reusing {workdir} (made before commands were recorded)", flush=True)
    return workdir


def last_eval(workdir: str) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r for r in rows if "eval_loss" in r][-1]


def run_name(name: str, n: int, lr: float, seed: int) -> str:
    """A fine-tuning run's directory under --workdir (seed 0 keeps the names of older runs)."""
    return f"{name}_n{n}_lr{lr:g}" + (f"_seed{seed}" if seed else "")


def finetune(args, init: str, name: str, n: int, lr: float, seed: int,
             random_init: bool) -> dict:
    run = run_name(name, n, lr, seed)
    workdir = os.path.join(args.workdir, run)
    results = os.path.join(workdir, "results.json")
    cmd = [sys.executable, "-m", "robertax.finetune", "--config=configs/finetune/sst2.py",
           f"--workdir={workdir}", f"--config.init_checkpoint={init}",
           f"--config.data_dir={args.glue_dir}", f"--config.max_train_examples={n}",
           f"--config.num_epochs={args.epochs}", f"--config.learning_rate={lr}",
           f"--config.batch_size={args.batch_size}", f"--config.seed={seed}",
           f"--config.random_init={random_init}", "--config.progress=False",
           "--config.overwrite=True", *(args.finetune_flag or [])]
    have = recorded_command(workdir)
    if not os.path.exists(results) or have is None or have[1:] != cmd[1:]:
        if os.path.exists(results):  # a finished run of other settings: run this one instead
            print(f"rerunning {workdir}: " + ("no record of its command" if have is None else
                                               "it was made by another command"), flush=True)
        sh(cmd, os.path.join(args.workdir, f"{run}.log"))
        record_command(workdir, cmd)  # only once it has finished
    with open(results) as f:
        return json.load(f)


def majority(args, n: int) -> tuple[float, str]:
    """Dev accuracy of always answering the most frequent label of the training subset."""
    from robertax.tasks import glue, runner
    train = runner.subset(glue.read_tsv("SST-2", args.glue_dir, "train"), n, 0)
    label = collections.Counter(ex.label for ex in train).most_common(1)[0][0]
    dev = glue.read_tsv("SST-2", args.glue_dir, "validation")
    return float(np.mean([ex.label == label for ex in dev])), glue.TASKS["SST-2"].labels[label]


def main(argv=None):
    floats = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--glue_dir", default=os.path.join(DATA, "glue"))
    p.add_argument("--corpus", action="append",
                   help="builtin | sst2_train_text | enwiki | a text file, joined with +; "
                        "NAME:STEPS (repeat; default sst2_train_text+enwiki)")
    p.add_argument("--tokenizer", choices=("corpus", "builtin"), default="corpus")
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--pretrain_steps", type=int, default=6000)
    p.add_argument("--pretrain_lr", type=float, default=3e-3)
    p.add_argument("--train_examples", type=ints, default=[1000, 4000])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--learning_rates", type=floats, default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seeds", type=ints, default=[0],
                   help="fine-tuning seeds; each setting reports the median over them")
    p.add_argument("--train_flag", action="append",
                   help="extra flag for robertax.train, e.g. --train_flag=--config.precision=bfloat16")
    p.add_argument("--finetune_flag", action="append", help="extra flag for robertax.finetune")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)

    corpora = []
    for spec in args.corpus or ["sst2_train_text+enwiki"]:
        name, _, steps = spec.rpartition(":") if ":" in spec else (spec, "", "")
        corpora.append((name, int(steps) if steps else args.pretrain_steps))
    inits = {name: pretrain(args, name, steps) for name, steps in corpora}

    summary = {"epochs": args.epochs, "learning_rates": args.learning_rates,
               "pretraining": {}, "subsets": {}}
    for name, steps in corpora:
        ev = last_eval(inits[name])
        summary["pretraining"][name] = {"steps": steps, "eval_loss": ev["eval_loss"],
                                        "eval_accuracy": ev["eval_accuracy"]}
    lines = []
    for n in args.train_examples:
        rows = {}  # label -> {lr: {seed: results}}
        for name, steps in corpora:
            tag = _name(name)
            for label, run, random_init in (
                    (f"pretrained on {name} ({steps} steps)", f"finetune_{tag}", False),
                    # Random weights with this model's architecture and tokenizer.
                    (f"random init ({tag} tokenizer)", f"finetune_random_{tag}", True)):
                rows[label] = {lr: {seed: finetune(args, inits[name], run, n, lr, seed, random_init)
                                    for seed in args.seeds}
                               for lr in args.learning_rates}
        maj, label = majority(args, n)
        # every run reads the same data: the counts from any one
        some = next(iter(rows.values()))[args.learning_rates[0]][args.seeds[0]]
        sub = {"dev_examples": some["eval_examples"]["dev"], "train_examples": some["train_examples"],
               "seeds": args.seeds, "majority": maj, "majority_label": label, "rows": {}}
        for row, by_lr in rows.items():
            seeds = {f"{lr:g}": [r[seed]["accuracy"] for seed in args.seeds]
                     for lr, r in by_lr.items()}
            medians = {lr: float(np.median(accs)) for lr, accs in seeds.items()}
            best = max(medians, key=medians.get)
            sub["rows"][row] = {"best": medians[best], "best_lr": float(best),
                                "best_by_seed": seeds[best], "by_lr": medians,
                                "by_lr_and_seed": seeds}
        sub["holds"] = {}
        for name, steps in corpora:
            ours = sub["rows"][f"pretrained on {name} ({steps} steps)"]["best"]
            theirs = sub["rows"][f"random init ({_name(name)} tokenizer)"]["best"]
            sub["holds"][name] = ours > max(theirs, maj)
        summary["subsets"][str(n)] = sub

        lrs = "  ".join(f"{lr:>7g}" for lr in args.learning_rates)
        seeds = " ".join(str(s) for s in args.seeds)
        lines += [f"SST-2 dev accuracy ({sub['dev_examples']} sentences; fine-tuned on "
                  f"{sub['train_examples']} training sentences, {args.epochs} epochs; median "
                  f"over seeds {seeds})",
                  f"  {'':<52} {'best':>7}   by learning rate: {lrs}   seeds at best"]
        for row, r in sub["rows"].items():
            lines.append(f"  {row:<52} {r['best']:>7.4f}   {'':>17} "
                         + "  ".join(f"{v:>7.4f}" for v in r["by_lr"].values())
                         + "   " + " ".join(f"{v:.4f}" for v in r["best_by_seed"]))
        lines.append(f"  {'majority class (' + repr(label) + ')':<52} {maj:>7.4f}")
        lines += [f"  pretraining on {name} beats random init and majority: {ok}"
                  for name, ok in sub["holds"].items()]
    for name, r in summary["pretraining"].items():
        lines.append(f"pretraining on {name}: {r['steps']} steps, held-out MLM loss "
                     f"{r['eval_loss']:.3f} nats, accuracy {r['eval_accuracy']:.3f}")
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n".join(lines), flush=True)
    return summary


if __name__ == "__main__":
    main()
