"""The paper's ablation tables (Liu et al., 2019, Tables 1-4), run and tabulated: each row's
pretraining config (configs/paper/), then the table's downstream tasks fine-tuned from that row's
checkpoint, the median over seeds per cell (as the paper reports), printed beside the paper's
numbers.

    python tools/paper_study.py --table=2 --workdir=/ckpt/table2 \
        --corpus=/data/books_wiki_shards --tokenizer=/data/roberta_bpe \
        --glue_dir=/data/glue --squad_dir=/data/squad --race_dir=/data/RACE

Table 4's rows read two corpora: name each (`--corpus=books_wiki=DIR --corpus=all_160gb=DIR`).
Columns: Table 1 SQuAD 2.0 F1, MNLI-m, SST-2; Table 2 SQuAD 1.1/2.0 F1, MNLI-m, SST-2, RACE;
Table 3 held-out perplexity, MNLI-m, SST-2; Table 4 SQuAD 1.1/2.0 F1, MNLI-m, SST-2. Accuracies
in percent. Every table also shows each row's held-out perplexity (exp of its pretraining run's
last eval loss, on the corpus's valid split), which the paper reports in Table 3 only.

Shrink a table at will: `--pretrain_set=key=value` sets any pretraining field of every row
(e.g. model.num_layers=2); `--batch_divisor=N` / `--steps_divisor=N` divide every row's batch
size and its steps (total and warmup), which keeps Table 3's rows at equal compute;
`--finetune_set=[TASK:]key=value` sets a fine-tuning field (of one task with the prefix);
`--tasks=sst2,squad_v2` runs some columns only (the others print "-"), `--tasks=none` pretrains
only (Table 3's perplexity); `--rows=` some rows.

Every run is what a user would type: `python -m robertax.train` in WORKDIR/ROW/pretrain (its log
beside it), and each cell a `tools/glue_sweep.py` grid over --seeds in WORKDIR/ROW/TASK: one
setting, the task config's learning rate and batch size, unless --learning_rates/--batch_sizes
give a grid (the paper's GLUE grid is 1e-5,2e-5,3e-5 x 16,32); the cell is the median at the
grid's best setting. Finished work is reused when the tool runs
again: a pretraining run resumes from its last checkpoint (a finished one does nothing; other
settings are refused by robertax.train), a fine-tuning run whose settings are the same is kept.
`--in_process` runs everything in this process (quicker at toy scale). Writes WORKDIR/study.json
and WORKDIR/study.md (the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
import glue_sweep  # noqa: E402  (tools/ is not a package)

# (task, results.json metric, scale to percent, header). The tasks' configs are
# configs/finetune/<task>.py; "ppl" is the pretraining run's own.
COLUMNS = {
    "ppl": ("ppl", None, 1.0, "ppl"),
    "squad_v1": ("squad_v1", "f1", 1.0, "SQuAD 1.1 F1"),
    "squad_v2": ("squad_v2", "f1", 1.0, "SQuAD 2.0 F1"),
    "mnli": ("mnli", "accuracy", 100.0, "MNLI-m"),
    "sst2": ("sst2", "accuracy", 100.0, "SST-2"),
    "race": ("race", "accuracy", 100.0, "RACE"),
}
TABLES = {
    1: ("Table 1: static vs. dynamic masking (BERT-base)", ("squad_v2", "mnli", "sst2")),
    2: ("Table 2: input format and NSP (BERT-base)",
        ("squad_v1", "squad_v2", "mnli", "sst2", "race")),
    3: ("Table 3: batch size at equal compute (BERT-base)", ("ppl", "mnli", "sst2")),
    4: ("Table 4: RoBERTa with more data and longer pretraining (large)",
        ("squad_v1", "squad_v2", "mnli", "sst2")),
}
# The paper's numbers for each row (dev sets; medians of five seeds for Tables 1-2).
PAPER = {
    "table1_static": {"squad_v2": 78.3, "mnli": 84.3, "sst2": 92.5},
    "table1_dynamic": {"squad_v2": 78.7, "mnli": 84.0, "sst2": 92.9},
    "table2_segment_pair": {"squad_v1": 90.4, "squad_v2": 78.7, "mnli": 84.0, "sst2": 92.9,
                            "race": 64.2},
    "table2_sentence_pair": {"squad_v1": 88.7, "squad_v2": 76.2, "mnli": 82.9, "sst2": 92.1,
                             "race": 63.0},
    "table2_full_sentences": {"squad_v1": 90.4, "squad_v2": 79.1, "mnli": 84.7, "sst2": 92.5,
                              "race": 64.8},
    "table2_doc_sentences": {"squad_v1": 90.6, "squad_v2": 79.7, "mnli": 84.7, "sst2": 92.7,
                             "race": 65.6},
    "table3_batch256": {"ppl": 3.99, "mnli": 84.7, "sst2": 92.7},
    "table3_batch2k": {"ppl": 3.68, "mnli": 85.2, "sst2": 92.9},
    "table3_batch8k": {"ppl": 3.77, "mnli": 84.6, "sst2": 92.8},
    "table4_books_wiki_100k": {"squad_v1": 93.6, "squad_v2": 87.3, "mnli": 89.0, "sst2": 95.3},
    "table4_more_data_100k": {"squad_v1": 94.0, "squad_v2": 87.7, "mnli": 89.3, "sst2": 95.6},
    "table4_pretrain_longer_300k": {"squad_v1": 94.4, "squad_v2": 88.7, "mnli": 90.0,
                                    "sst2": 96.1},
    "table4_pretrain_longer_500k": {"squad_v1": 94.6, "squad_v2": 89.4, "mnli": 90.2,
                                    "sst2": 96.4},
}
DATA_FLAG = {"squad_v1": "squad_dir", "squad_v2": "squad_dir", "mnli": "glue_dir",
             "sst2": "glue_dir", "race": "race_dir"}


def rows_of(table: int) -> list[str]:
    return [name for name in PAPER if name.startswith(f"table{table}_")]


def row_config_path(row: str) -> str:
    return os.path.join(REPO, "configs", "paper", row + ".py")


def pretrain_overrides(args, row: str) -> list[str]:
    """The --config.KEY=VALUE assignments (without the prefix) one row's pretraining gets:
    corpus and tokenizer, the divisors' batch and steps, then --pretrain_set."""
    c = glue_sweep.load_config(row_config_path(row))
    out = []
    corpus = args.corpus_map.get(c.data.corpus, args.corpus_map.get(""))
    if corpus is None:
        raise ValueError(f"{row} reads corpus {c.data.corpus!r}: pass --corpus=DIR (every row) "
                         f"or --corpus={c.data.corpus}=DIR")
    out.append(f"data.corpus={corpus}")
    if args.tokenizer:
        out.append(f"data.tokenizer={args.tokenizer}")
    if args.batch_divisor > 1:
        if c.batch_size % args.batch_divisor:
            raise ValueError(f"--batch_divisor={args.batch_divisor} does not divide {row}'s "
                             f"batch size {c.batch_size}")
        batch = c.batch_size // args.batch_divisor
        micro = c.microbatches if batch % c.microbatches == 0 else 1
        out += [f"batch_size={batch}", f"microbatches={micro}"]
    if args.steps_divisor > 1:
        total = max(1, c.optim.total_steps // args.steps_divisor)
        warmup = c.optim.warmup_steps // args.steps_divisor
        if c.optim.warmup_steps and not warmup:
            warmup = 1
        out += [f"optim.total_steps={total}", f"optim.warmup_steps={min(warmup, total)}"]
    return out + list(args.pretrain_set)


def pretrain(args, row: str) -> dict:
    """Runs (or resumes, or finds finished) one row's pretraining; its steps and held-out
    perplexity at the last evaluation."""
    workdir = os.path.join(args.workdir, row, "pretrain")
    sets = pretrain_overrides(args, row)
    if args.in_process:
        from robertax import train
        train.train(glue_sweep.load_config(row_config_path(row), sets), workdir)
    else:
        os.makedirs(workdir, exist_ok=True)
        cmd = [sys.executable, "-m", "robertax.train", f"--config={row_config_path(row)}",
               f"--workdir={workdir}", *[f"--config.{s}" for s in sets]]
        log = os.path.join(args.workdir, row, "pretrain.log")
        print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        with open(log, "a") as f:
            done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{row}: pretraining failed (exit {done.returncode}); see {log}")
    return pretrain_summary(workdir)


def pretrain_summary(workdir: str) -> dict:
    """The last train and eval rows of a pretraining workdir's metrics.jsonl."""
    train_row, eval_row = None, None
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "eval_loss" in r:
                eval_row = r
            elif "loss" in r:
                train_row = r
    if eval_row is None:
        raise ValueError(f"{workdir}/metrics.jsonl has no eval row: the corpus's valid split "
                         "is empty or smaller than one batch")
    with open(os.path.join(workdir, "config.json")) as f:
        total = json.load(f)["optim"]["total_steps"]
    if eval_row["step"] != total:  # e.g. stopped by SIGTERM: its checkpoint resumes
        raise RuntimeError(f"{workdir}: pretraining stopped at step {eval_row['step']} of "
                           f"{total}; run the study again to resume it")
    return {"workdir": workdir, "step": eval_row["step"], "eval_loss": eval_row["eval_loss"],
            "ppl": math.exp(eval_row["eval_loss"]),
            "train_loss": train_row["loss"] if train_row else None}


def finetune_sets(args, task: str) -> list[str]:
    flag = DATA_FLAG[task]
    out = [f"data_dir={getattr(args, flag)}"]
    for s in args.finetune_set:
        prefix, sep, rest = s.partition(":")
        if sep and "=" not in prefix:
            if prefix not in DATA_FLAG:
                raise ValueError(f"--finetune_set={s}: unknown task {prefix!r} "
                                 f"(one of {', '.join(DATA_FLAG)})")
            if prefix == task:
                out.append(rest)
        else:
            out.append(s)
    return out


def finetune_cell(args, row: str, task: str) -> dict:
    """One cell: the task fine-tuned from the row's checkpoint over --seeds, via glue_sweep: the
    median at the best setting of the grid (by default one setting, the task config's)."""
    config_path = os.path.join(REPO, "configs", "finetune", task + ".py")
    sets = finetune_sets(args, task)
    c = glue_sweep.load_config(config_path, sets)  # the default grid: the recipe's setting
    lrs = args.learning_rates or [repr(c.learning_rate)]
    batches = args.batch_sizes or [str(c.batch_size)]
    sweep_args = glue_sweep.parse_args([
        f"--config={config_path}", f"--workdir={os.path.join(args.workdir, row, task)}",
        f"--init_checkpoint={os.path.join(args.workdir, row, 'pretrain')}",
        f"--learning_rates={','.join(lrs)}", f"--batch_sizes={','.join(batches)}",
        f"--seeds={args.seeds}", f"--metric={COLUMNS[task][1]}",
        *[f"--set={s}" for s in sets if not s.startswith(("learning_rate=", "batch_size="))],
        *(["--in_process"] if args.in_process else [])])
    summary = glue_sweep.sweep(sweep_args)
    metric, scale = COLUMNS[task][1], COLUMNS[task][2]
    best = summary["best"]
    return {"metric": metric, "median": best["median"][metric] * scale,
            "scores": [v * scale for v in best["scores"][metric]],
            "learning_rate": best["learning_rate"], "batch_size": best["batch_size"]}


def format_table(table: int, rows: list[dict], seeds: int) -> str:
    """Markdown: one line per row, each cell "ours (paper)"; "-" where a column was not run
    (or, in parentheses, where the paper gives no number: held-out perplexity outside Table 3)."""
    title, columns = TABLES[table]
    if "ppl" not in columns:  # held-out perplexity, beside every table (the paper's in Table 3)
        columns = ("ppl",) + columns
    head = ["row"] + [COLUMNS[c][3] for c in columns]
    lines = [f"{title}: robertax (the paper's number in parentheses); fine-tuning cells are the "
             f"median over {seeds} seed{'s' * (seeds != 1)}",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"]]
        for c in columns:
            paper = PAPER[r["row"]].get(c)
            ours = r["cells"].get(c)
            fmt = "{:.2f}" if c == "ppl" else "{:.1f}"
            cells.append(f"{'-' if ours is None else fmt.format(ours)} "
                         f"({'-' if paper is None else fmt.format(paper)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study(args) -> dict:
    title, columns = TABLES[args.table]
    rows = args.rows or rows_of(args.table)
    for row in rows:
        if row not in rows_of(args.table):
            raise ValueError(f"--rows: {row!r} is not a row of Table {args.table} "
                             f"({', '.join(rows_of(args.table))})")
    tasks = [c for c in columns if c != "ppl"]
    if args.tasks == ["none"]:
        tasks = []
    elif args.tasks:
        bad = [t for t in args.tasks if t not in tasks]
        if bad:
            raise ValueError(f"--tasks: {', '.join(bad)} not a column of Table {args.table} "
                             f"(its tasks: {', '.join(tasks)})")
        tasks = [t for t in tasks if t in args.tasks]
    missing = sorted({DATA_FLAG[t] for t in tasks if not getattr(args, DATA_FLAG[t])})
    if missing:
        raise ValueError("missing " + ", ".join(f"--{m}" for m in missing) + " for the tasks "
                         + ", ".join(t for t in tasks if DATA_FLAG[t] in missing))
    for row in rows:  # every row's corpus is known before anything runs
        pretrain_overrides(args, row)
    out = []
    for row in rows:
        entry = {"row": row, "paper": PAPER[row], "pretrain": pretrain(args, row), "cells": {},
                 "runs": {}}
        entry["cells"]["ppl"] = entry["pretrain"]["ppl"]
        for task in tasks:
            cell = finetune_cell(args, row, task)
            entry["cells"][task], entry["runs"][task] = cell["median"], cell
        out.append(entry)
        print(f"done {row}", flush=True)
    result = {"table": args.table, "title": title, "columns": list(columns),
              "seeds": args.seeds, "rows": out}
    text = format_table(args.table, out, args.seeds)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "study.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.workdir, "study.md"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    return result


def parse_args(argv=None):
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=int, required=True, choices=sorted(TABLES))
    p.add_argument("--workdir", required=True)
    p.add_argument("--rows", type=names, default=None, help="some rows only (config names)")
    p.add_argument("--tasks", type=names, default=None,
                   help="some columns only; none: pretraining only")
    p.add_argument("--corpus", action="append", default=[],
                   help="DIR for every row, or NAME=DIR for the rows whose corpus is NAME")
    p.add_argument("--tokenizer", default="", help="the tokenizer directory of the shards")
    p.add_argument("--glue_dir", default="")
    p.add_argument("--squad_dir", default="")
    p.add_argument("--race_dir", default="")
    p.add_argument("--seeds", type=int, default=glue_sweep.PAPER_SEEDS)
    p.add_argument("--learning_rates", type=names, default=None,
                   help="a fine-tuning grid for every task (default: each config's own)")
    p.add_argument("--batch_sizes", type=names, default=None)
    p.add_argument("--batch_divisor", type=int, default=1)
    p.add_argument("--steps_divisor", type=int, default=1)
    p.add_argument("--pretrain_set", action="append", default=[],
                   help="key=value for every row's pretraining config (repeat)")
    p.add_argument("--finetune_set", action="append", default=[],
                   help="[TASK:]key=value for the fine-tuning configs (repeat)")
    p.add_argument("--in_process", action="store_true")
    args = p.parse_args(argv)
    args.corpus_map = {}
    for spec in args.corpus:
        name, sep, path = spec.partition("=")
        args.corpus_map.update({name: path} if sep else {"": spec})
    if args.batch_divisor < 1 or args.steps_divisor < 1:
        p.error("--batch_divisor and --steps_divisor must be at least 1")
    return args


if __name__ == "__main__":
    try:
        study(parse_args())
    except (ValueError, KeyError, RuntimeError) as e:  # bad input, or a run failed (its log)
        raise SystemExit(f"error: {e}") from None
