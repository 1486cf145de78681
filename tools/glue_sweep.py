"""The paper's GLUE protocol: a grid of learning rates x batch sizes, several seeds each; report
the median dev score over seeds per setting and the best setting (Liu et al., 2019, Section 5
and Table 10: LR {1e-5, 2e-5, 3e-5} x batch {16, 32}, median of 5 seeds).

    python tools/glue_sweep.py --config=configs/finetune/rte.py --init_checkpoint=PATH \
        --workdir=/tmp/rte_sweep [--set=data_dir=glue_data]

Every run is `python -m robertax.finetune` in its own workdir (DIR/lr{LR}_bs{B}/seed{S}); a run
whose results.json exists is reused when it was made with the same settings (the full config,
kept beside it in sweep_run.json), so an interrupted sweep resumes; with other settings (e.g. a
new --max_train_examples) it runs again. Shrink it at will:
    --learning_rates=2e-5 --batch_sizes=16 --seeds=2 --max_steps=20 --max_train_examples=256
`--in_process` runs the grid in this process (no subprocesses: quicker at toy scale, no
parallelism); `--jobs=N` runs N subprocesses at once (e.g. one per GPU, set by the caller).
Writes DIR/sweep.json: per setting the per-seed scores and medians of every metric, and the best.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_LRS = (1e-5, 2e-5, 3e-5)  # Table 10 (GLUE)
PAPER_BATCHES = (16, 32)         # Table 10 (GLUE)
PAPER_SEEDS = 5                  # Section 5: median over five random initializations


def load_config(path: str, sets=()):
    """get_config() of a config file, as config_flags would read it, with the "key=value"
    overrides `sets` applied (`set_override`)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    if spec is None:
        raise FileNotFoundError(f"--config={path}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for s in sets:
        set_override(config, s)
    return config


def set_override(config, assignment: str) -> None:
    """Applies "key.sub=value" to a ConfigDict, parsing value as the field's current type."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set {assignment!r}: expected key=value")
    *parents, leaf = key.strip().split(".")
    node = config
    for name in parents:
        node = node[name]
    if leaf not in node:
        raise KeyError(f"--set {assignment!r}: the config has no field {key!r}")
    old = node[leaf]
    if isinstance(old, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {assignment!r}: {key} is a bool (true/false)")
        value = text.lower() in ("true", "1")
    elif isinstance(old, int):
        value = int(text)
    elif isinstance(old, float):
        value = float(text)
    else:
        value = text
    node[leaf] = value


def run_dir(workdir: str, lr: float, batch: int, seed: int) -> str:
    return os.path.join(workdir, f"lr{lr:g}_bs{batch}", f"seed{seed}")


def overrides(args, lr: float, batch: int, seed: int) -> list[str]:
    out = [f"learning_rate={lr!r}", f"batch_size={batch}", f"seed={seed}", "progress=False"]
    if args.init_checkpoint:
        out.append(f"init_checkpoint={args.init_checkpoint}")
    for key in ("max_steps", "max_train_examples", "max_eval_examples", "num_epochs"):
        value = getattr(args, key)
        if value is not None:
            out.append(f"{key}={value}")
    return out + list(args.set or [])


RECORD = "sweep_run.json"  # beside a run's results.json: the settings that produced it
_UNRECORDED = ("progress", "overwrite")  # change no result


def settings(args, sets: list[str]) -> dict:
    """The full config one run gets (the config file with the overrides applied), as JSON."""
    config = load_config(args.config, sets)
    values = json.loads(config.to_json_best_effort())
    return {k: v for k, v in values.items() if k not in _UNRECORDED}


def _stale(workdir: str, want: dict) -> str | None:
    """Why the finished run in `workdir` cannot stand for `want` (None: it can)."""
    path = os.path.join(workdir, RECORD)
    if not os.path.exists(path):
        return f"no {RECORD} says which settings produced it"
    with open(path) as f:
        have = json.load(f)
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    if diff:
        return "different settings: " + ", ".join(
            f"{k} {have.get(k)!r} -> {want.get(k)!r}" for k in diff[:6])
    return None


def run_one(args, lr: float, batch: int, seed: int) -> dict:
    """One grid point; its results.json (reused when it was made with the same settings)."""
    workdir = run_dir(args.workdir, lr, batch, seed)
    results = os.path.join(workdir, "results.json")
    sets = overrides(args, lr, batch, seed)
    want = settings(args, sets)
    if os.path.exists(results):
        why = _stale(workdir, want)
        if why is None:
            with open(results) as f:
                return json.load(f)
        print(f"rerunning {workdir}: its results.json has {why}", flush=True)
        sets.append("overwrite=True")
    if args.in_process:
        from robertax import finetune
        finetune.finetune(load_config(args.config, sets), workdir)
    else:
        os.makedirs(workdir, exist_ok=True)
        cmd = [sys.executable, "-m", "robertax.finetune", f"--config={args.config}",
               f"--workdir={workdir}", *[f"--config.{s}" for s in sets]]
        with open(os.path.join(workdir, "log.txt"), "w") as log:
            done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"run lr={lr:g} batch={batch} seed={seed} failed "
                               f"(exit {done.returncode}); see {workdir}/log.txt")
    with open(os.path.join(workdir, RECORD), "w") as f:  # only once the run has finished
        json.dump(want, f, indent=2)
    with open(results) as f:
        return json.load(f)


def summarize(runs: dict[tuple[float, int], list[dict]], metric: str | None = None) -> dict:
    """Per setting: per-seed scores and the median of every metric; the best setting by the
    median of `metric` (default: the metric each run selected by, results.json's `metric`)."""
    settings = []
    for (lr, batch), results in sorted(runs.items()):
        if not results:
            continue
        metric = metric or results[0]["metric"]
        names = [k for k, v in results[0].items() if isinstance(v, float)
                 and k not in ("epoch", "seconds")]
        scores = {k: [r.get(k, float("nan")) for r in results] for k in names}
        settings.append({
            "learning_rate": lr, "batch_size": batch, "seeds": len(results),
            "scores": scores,
            "median": {k: float(np.median(v)) for k, v in scores.items()},
            "mean": {k: float(np.mean(v)) for k, v in scores.items()},
            "std": {k: float(np.std(v)) for k, v in scores.items()},
        })
    if not settings:
        raise ValueError("no finished runs to summarize")
    key = lambda s: -np.inf if np.isnan(s["median"][metric]) else s["median"][metric]  # noqa
    best = max(settings, key=key)
    return {"task": next(iter(runs.values()))[0].get("task"), "metric": metric,
            "settings": settings, "best": best}


def format_table(summary: dict) -> str:
    m = summary["metric"]
    lines = [f"{summary['task']}: median {m} over seeds", f"{'lr':>8} {'batch':>6} {'seeds':>6} "
             f"{'median':>8} {'mean':>8} {'std':>7}  per seed"]
    for s in summary["settings"]:
        mark = "  <- best" if s is summary["best"] else ""
        lines.append(f"{s['learning_rate']:>8g} {s['batch_size']:>6} {s['seeds']:>6} "
                     f"{s['median'][m]:>8.4f} {s['mean'][m]:>8.4f} {s['std'][m]:>7.4f}  "
                     + " ".join(f"{v:.4f}" for v in s["scores"][m]) + mark)
    return "\n".join(lines)


def sweep(args) -> dict:
    grid = [(lr, b, seed) for lr in args.learning_rates for b in args.batch_sizes
            for seed in range(args.seeds)]
    runs: dict = {(lr, b): [] for lr in args.learning_rates for b in args.batch_sizes}
    if args.in_process or args.jobs <= 1:
        for lr, b, seed in grid:
            runs[(lr, b)].append(run_one(args, lr, b, seed))
            print(f"done lr={lr:g} batch={b} seed={seed}", flush=True)
    else:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {(lr, b, seed): pool.submit(run_one, args, lr, b, seed)
                       for lr, b, seed in grid}
            for (lr, b, seed), fut in futures.items():
                runs[(lr, b)].append(fut.result())
    summary = summarize(runs, args.metric)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "sweep.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(format_table(summary), flush=True)
    return summary


def parse_args(argv=None):
    floats = lambda s: tuple(float(x) for x in s.split(",") if x)  # noqa: E731
    ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/finetune/<task>.py")
    p.add_argument("--workdir", required=True)
    p.add_argument("--init_checkpoint", default="")
    p.add_argument("--learning_rates", type=floats, default=PAPER_LRS)
    p.add_argument("--batch_sizes", type=ints, default=PAPER_BATCHES)
    p.add_argument("--seeds", type=int, default=PAPER_SEEDS)
    p.add_argument("--max_steps", type=int)
    p.add_argument("--num_epochs", type=int)
    p.add_argument("--max_train_examples", type=int)
    p.add_argument("--max_eval_examples", type=int)
    p.add_argument("--metric", default=None, help="rank settings by this (default: the task's)")
    p.add_argument("--set", action="append", help="any config field: --set=key=value (repeat)")
    p.add_argument("--jobs", type=int, default=1, help="subprocesses at once")
    p.add_argument("--in_process", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    sweep(parse_args())
