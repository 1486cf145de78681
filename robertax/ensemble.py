"""Ensembles of fine-tuned models: their outputs averaged, then scored and written as one model's.

    python -m robertax.ensemble --config=configs/finetune/rte.py --config.data_dir=glue_data \
        --models=/tmp/rte_sweep/lr2e-05_bs16/seed0,/tmp/rte_sweep/lr2e-05_bs16/seed1,... \
        --config.predict_test=True --workdir=/tmp/rte_ensemble

The paper's GLUE test-set results (Table 5) come from ensembles of 5 to 7 models per task.
Each member (a fine-tuning workdir, whose best/ is read, a robertax model dir, a Hugging Face
dir or a fairseq model, holding the task's head) is evaluated as `robertax.finetune` with
config.do_train=False evaluates it, one member at a time; their outputs are combined per
example by `combine`:
  classification (GLUE, RACE's options)  the mean of the members' probabilities (QNLI with
                                         config.ranking: then ranked by question on them;
                                         WSC: over each row's candidates, softmax of scores)
  regression (STS-B)                     the mean of their scores
  span extraction (SQuAD)                the mean of their start, end (and v2.0 answerable)
                                         logits, then decoded as one model's are
The members must see the same inputs (one tokenizer, the same max_length): a member that
encodes the data differently is refused, naming it.

Writes to --workdir what an evaluation-only fine-tuning run writes: results.json (the
ensemble's dev metrics by name, plus `models` and `members`: each member's own dev metrics),
the dev prediction files and, with config.predict_test, the GLUE submission files (RACE: the
test accuracy and test_predictions.json). No model is written.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import flags, logging

from robertax import finetune, sharding
from robertax.tasks import runner
from robertax.train import cli_config, input_checks, run_cli

HOW = {"probabilities": "the mean of the members' probabilities",
       "scores": "the mean of the members' scores",
       "logits": "the mean of the members' start/end (and answerable) logits"}


def how(task) -> str:
    """What `combine` averages for this task: "probabilities", "scores" or "logits"."""
    if isinstance(task, runner.SquadTask):
        return "logits"
    if isinstance(task, runner.GlueTask) and task.task.is_regression:
        return "scores"
    return "probabilities"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def combine(task, outputs: Sequence):
    """One output from the members' outputs on the same examples (each a numpy pytree with N
    first, as `finetune.predict` returns them). Probabilities are returned as their logarithm,
    which the task scores and writes as it does a model's logits (the argmax is the class)."""
    kind = how(task)
    if kind == "probabilities":
        lp = np.stack([_log_softmax(np.asarray(o)) for o in outputs])  # [M, N, C]
        top = lp.max(0)
        return (top + np.log(np.exp(lp - top).mean(0))).astype(np.float32)
    return jax.tree.map(
        lambda *xs: np.mean(np.stack(xs).astype(np.float64), 0).astype(np.float32), *outputs)


def _inputs(p: finetune.Prepared) -> list[tuple[str, dict]]:
    """(name, model inputs) of every dev and test set p evaluates."""
    sets = [(f"the dev set{es.name}", es.arrays) for es in p.eval_sets] + finetune.test_arrays(p)
    return [(name, {k: a[k] for k in finetune.INPUT_KEYS}) for name, a in sets]


def _check_same_inputs(first: finetune.Prepared, p: finetune.Prepared) -> None:
    for (name, a), (_, b) in zip(_inputs(first), _inputs(p)):
        if any(a[k].shape != b[k].shape or not np.array_equal(a[k], b[k]) for k in a):
            raise ValueError(
                f"{p.source}: encodes {name} differently from {first.source} (tokenizer "
                f"{p.tokenizer_path} vs {first.tokenizer_path}, max_length "
                f"{p.config.max_length} vs {first.config.max_length}): the members of an "
                "ensemble must see the same inputs")


def member_config(config, model: str):
    """The evaluation-only fine-tuning config that scores one member."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.init_checkpoint, c.do_train = str(model), False
    return c


def ensemble(config, models: Sequence[str], workdir: str) -> dict:
    """Evaluates each of `models` on config's task, combines their outputs (`combine`), and
    writes the ensemble's results.json, prediction and submission files to `workdir`; returns
    what results.json holds."""
    workdir = os.path.abspath(workdir)
    t_start = time.perf_counter()
    with input_checks():
        models = list(models)
        if len(models) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(models)} "
                             "(config.do_train=False in robertax.finetune evaluates one)")
        seen = {}
        for m in models:
            real = os.path.realpath(m)
            if real in seen:
                raise ValueError(f"--models names {seen[real]} twice" +
                                 (f" (as {m})" if m != seen[real] else ""))
            seen[real] = m
        for key in ("init_checkpoint", "from_mnli"):
            if config[key]:
                raise ValueError(f"config.{key}={config[key]!r}: an ensemble's models are "
                                 "--models, not config." + key)
        sharding.maybe_initialize_distributed()
        configs = [member_config(config, m) for m in models]
        for c in configs:  # before anything is read: nothing is removed yet
            finetune.check_workdir(workdir, c)

    first, members, dev, test = None, [], [], []
    for c in configs:
        with input_checks():
            p = finetune.prepare(c)
            if first is None:
                first = p
            else:
                _check_same_inputs(first, p)
        metric = p.config.select_metric or p.task.metric  # the same for every member
        eval_bs = finetune.eval_batch_size(p)
        p_predict = finetune.predictor(p)
        row, outputs = finetune.evaluate_dev(p, p_predict, p.params, eval_bs, metric)
        dev.append(outputs)
        test.append(finetune.test_outputs(p, p_predict, p.params, eval_bs))
        members.append({"model": p.source, **row})
        logging.info("%s: %s %.4f", p.source, metric, row[metric])
        p.params = None  # one member's weights on the devices at a time

    task = first.task
    dev_out = [combine(task, [d[i] for d in dev]) for i in range(len(first.eval_sets))]
    test_out = [combine(task, [t[i] for t in test]) for i in range(len(test[0]))]
    row = {}
    for es, outputs in zip(first.eval_sets, dev_out):
        row.update(es.score(outputs))
    finetune.start_workdir(workdir, first.config)  # every member has run: now it is safe
    results = dict(row)
    results.update(finetune.write_predictions(first, dev_out, test_out, workdir))
    results.update({"task": task.name, "metric": metric, "do_train": False,
                    "ensemble": how(task), "models": [m["model"] for m in members],
                    "members": members,
                    "eval_examples": {es.name or "dev": es.examples for es in first.eval_sets},
                    "tokenizer": first.tokenizer_path,
                    "seconds": round(time.perf_counter() - t_start, 1)})
    finetune.write_results(workdir, results)
    logging.info("%s ensemble of %d: %s %.4f -> %s", task.name, len(members), metric,
                 row[metric], os.path.join(workdir, "results.json"))
    return results


def main(argv):
    del argv
    config, name = cli_config()
    workdir = flags.FLAGS.workdir or os.path.join("workdir", "ensemble", name)
    results = ensemble(config, flags.FLAGS.models, workdir)
    if jax.process_index() == 0:
        metric = results["metric"]
        for m in results["members"]:
            print(f"  {m[metric]:.4f}  {m['model']}", flush=True)
        print(f"{results['task']} ensemble of {len(results['members'])} "
              f"({HOW[results['ensemble']]}): {metric} {results[metric]:.4f} -> "
              f"{os.path.join(os.path.abspath(workdir), 'results.json')}", flush=True)


if __name__ == "__main__":
    flags.DEFINE_list("models", None, "Comma-separated fine-tuned models (fine-tuning "
                      "workdirs, robertax model dirs, Hugging Face or fairseq checkpoints).")
    flags.mark_flag_as_required("models")
    run_cli(main, os.path.join(finetune.REPO, "configs", "finetune", "sst2.py"),
            "Fine-tuning config file (the task, data and evaluation settings).",
            "Output directory (default: workdir/ensemble/<config>).")
