"""Fine-tuning entry point: GLUE, SQuAD v1.1/v2.0, RACE and WSC (WNLI) with the paper's recipes.

    python -m robertax.finetune --config=configs/finetune/sst2.py \
        --config.init_checkpoint=PATH --config.data_dir=glue_data --workdir=DIR

PATH is a robertax model dir, a pretraining workdir, a Hugging Face dir or a fairseq model
(read by `robertax.convert.read`). The tokenizer is `config.tokenizer`, else the one that
belongs to PATH: `<model dir>/tokenizer`, a pretraining workdir's `<shard dir>/tokenizer`, the
Hugging Face dir itself (vocab.json + merges.txt) or the fairseq dir (dict.txt + GPT-2 files).
Its vocabulary must match the checkpoint's. RTE, STS-B and MRPC may start from an MNLI model
(`config.from_mnli=PATH`: its encoder, a new head). A head the checkpoint holds is reused when
it was trained for this task (head=auto; a head for another task is replaced, with a warning),
its outputs put in the task's label order where the checkpoint names its labels.

`config.do_train=False` evaluates PATH as it is (a robertax `best/`, a converted Hugging Face
classifier, ...): it must hold the task's head; dev metrics, prediction files and (with
predict_test) submission files are written as after training, no model.

One `finetune()` in steps: weights + tokenizer -> task data -> model and sharded state ->
jitted step -> loop (log, evaluate at each epoch or every K steps, keep the best dev score,
early stopping) -> best model, test predictions, results. Writes to --workdir:
  results.json    the best evaluation's dev metrics by name (see robertax/tasks/runner.py),
                  plus `metric` (what selected it), `step`, `epoch` and every evaluation
  metrics.jsonl   train rows (`loss`, `learning_rate`, ...) and eval rows (`eval_<metric>`)
  tensorboard/    the same, as TensorBoard events
  best/           the best model in the robertax model format, its tokenizer in best/tokenizer
  submission/     GLUE leaderboard files (config.predict_test=True and a test file present)
  dev predictions of the best model: GLUE dev_predictions.tsv (index, prediction, label; MNLI
                  also dev_predictions_mismatched.tsv, QNLI with config.ranking
                  dev_predictions_ranking.tsv; WSC as WNLI's); SQuAD predictions.json
                  (id -> answer, the official scripts' input) and for v2.0 null_odds.json
                  (id -> no-answer score, their --na-prob-file); RACE dev_predictions.json
                  (id -> A-D) and with predict_test test_predictions.json

The per-task parts (data, head, loss, scoring) live in `robertax/tasks/runner.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # config files import `configs.finetune.base`
    sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags, logging  # noqa: E402

from robertax import checkpoint, observe, optim, sharding  # noqa: E402
from robertax.model import RobertaConfig, half_precision  # noqa: E402
from robertax.tasks import glue, runner  # noqa: E402
from robertax.tasks import starting_point as start  # noqa: E402

from robertax.train import (  # noqa: E402  (shared)
    PRECISIONS, cli_config, input_checks, make_dropout_rng, run_cli)
INPUT_KEYS = ("input_ids", "attention_mask")


# ---------------------------------------------------------------------------- the steps


def batch_loss(module, task, params, batch: dict, counts: dict | None = None, *,
               deterministic: bool = True, rng=None):
    """The task's training loss on `batch`: sum over loss terms of (summed loss / count).

    `counts` default to the batch's own; the train step passes the whole batch's counts when
    it splits it into microbatches."""
    counts = counts if counts is not None else task.loss_counts(batch)
    rngs = None if deterministic else {"dropout": rng}
    out = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                       deterministic=deterministic, rngs=rngs)
    sums = task.loss_sums(out, batch)
    return sum(sums[k] / jnp.maximum(counts[k], 1.0) for k in sorted(sums))


def train_step(state: optim.TrainState, batch: dict, rng, *, module, task, tx, schedule,
               microbatches: int, fp16: bool):
    counts = task.loss_counts(batch)
    scale = state.loss_scale.scale
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params, mb, r):
        loss = batch_loss(module, task, params, mb, counts, deterministic=False, rng=r)
        return loss * scale, loss

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if microbatches == 1:
        grads, loss = grad_fn(state.params, batch, step_rng)
    else:  # gradient accumulation inside the step (see robertax/step.py)
        split = jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), batch)

        def accumulate(carry, xs):
            i, mb = xs
            g, l = grad_fn(state.params, mb, jax.random.fold_in(step_rng, i))
            return jax.tree.map(jnp.add, carry, (g, l)), None

        zero = (jax.tree.map(jnp.zeros_like, state.params), jnp.float32(0))
        (grads, loss), _ = jax.lax.scan(accumulate, zero, (jnp.arange(microbatches), split))
    grads = jax.tree.map(lambda g: g / scale, grads)
    new_state, finite = state.apply_gradients(grads, tx, check_finite=fp16)
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads),
                       "learning_rate": schedule(state.step),
                       "skipped": (~finite).astype(jnp.int32)}


def predict_step(params, batch, *, module):
    return module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                        deterministic=True)


# ------------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Prepared:
    """Everything a run needs before its first step (tests inspect it too)."""
    config: Any
    task: Any
    tokenizer: Any
    tokenizer_path: str
    source: str
    model_config: RobertaConfig
    module: nn.Module
    mesh: Any
    param_shardings: Any
    params: dict                      # on device, in param_shardings
    train: dict[str, np.ndarray] | None  # None with config.do_train=False
    train_examples: int
    eval_sets: list
    test_sets: list                   # config.predict_test: the task's `test_sets`, else []


def _precision(name: str) -> str:
    if name == "auto":  # float32 on CPUs; on accelerators the 16-bit float they compute fast
        return "float32" if jax.default_backend() == "cpu" else half_precision()
    if name not in PRECISIONS:
        raise ValueError(f"config.precision must be auto or one of {sorted(PRECISIONS)}, "
                         f"got {name!r}")
    return name


def prepare(config) -> Prepared:
    """Reads weights, tokenizer and data; builds the model with its parameters on the mesh.

    Every check that needs no data runs first (task, select_metric, head options), so a typo
    fails before anything is loaded."""
    config = copy.deepcopy(config)
    if config.head not in ("auto", "fresh"):
        raise ValueError(f"config.head must be 'auto' or 'fresh', got {config.head!r}")
    if not config.do_train:
        for name, on in (("config.from_mnli", config.from_mnli),
                         ("config.head='fresh'", config.head == "fresh"),
                         ("config.random_init=True", config.random_init)):
            if on:
                raise ValueError(f"config.do_train=False evaluates config.init_checkpoint's own "
                                 f"head, but {name} asks for a new (untrained) one")
    multiple = config.get("pad_to_multiple_of", 0)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 0:
        raise ValueError(f"config.pad_to_multiple_of={multiple!r}: a whole "
                         "number of tokens, or 0 (every batch at the data's longest row)")
    task = runner.make_task(config)  # reads no data yet
    metric = config.select_metric or task.metric
    if metric not in task.metric_names:
        raise ValueError(f"config.select_metric={config.select_metric!r} is not a metric of "
                         f"{task.name}; choose one of {task.metric_names}")
    # 1. Weights and tokenizer (an MNLI model's encoder when from_mnli is set).
    if config.from_mnli and config.init_checkpoint and config.init_checkpoint != config.from_mnli:
        raise ValueError(f"config.from_mnli={config.from_mnli!r} and config.init_checkpoint="
                         f"{config.init_checkpoint!r}: give one (from_mnli is the checkpoint)")
    source = os.path.abspath(config.from_mnli or config.init_checkpoint) if (
        config.from_mnli or config.init_checkpoint) else ""
    mc, loaded, meta, fmt = start.load_checkpoint(source)
    head_task, head_labels = start.head_origin(meta)
    if config.from_mnli and head_task and not start.same_task(head_task, "MNLI"):
        raise ValueError(f"config.from_mnli={config.from_mnli!r} was fine-tuned on "
                         f"{head_task}, not MNLI")
    tok, tok_path = start.load_tokenizer(config, source, fmt)
    start.check_vocab(mc, tok, source, tok_path)
    precision = _precision(config.precision)
    mc = dataclasses.replace(mc, dropout_rate=config.dropout,
                             attention_dropout_rate=config.attention_dropout,
                             attention=config.attention, dtype=PRECISIONS[precision])
    with config.unlocked():
        config.precision = precision
        if config.max_length > mc.max_length:
            logging.warning("config.max_length %d exceeds the model's %d positions; using %d",
                            config.max_length, mc.max_length, mc.max_length)
            if isinstance(task, runner.RaceTask):
                # Keep the paper's share of the row for question + option (128 of 512).
                option = max(1, config.max_option_length * mc.max_length // config.max_length)
                logging.warning("RACE: config.max_option_length %d -> %d, the same share of the "
                                "shorter rows", config.max_option_length, option)
                config.max_option_length = option
            config.max_length = mc.max_length
    if isinstance(task, runner.RaceTask) and config.max_length < config.max_option_length + 5:
        raise ValueError(f"config.max_length={config.max_length} must exceed "
                         f"config.max_option_length={config.max_option_length} by at least 5 "
                         "(4 special tokens and some passage)")

    # 2. Data (no training set when only evaluating).
    train, n_train = None, 0
    if config.do_train:
        train, n_train = task.train_arrays(tok)
        if n_train == 0:
            raise ValueError(f"{task.name}: no training examples")
    eval_sets = task.eval_sets(tok)
    for es in eval_sets:
        if es.examples == 0:
            raise ValueError(f"{task.name}: the dev set{es.name or ''} has no examples")
    # Read now, so that a test set that cannot be read stops the run before training.
    test_sets = task.test_sets(tok) if config.predict_test else []

    # 3. Model and parameters, placed by the sharding rules (never whole on one device).
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(mesh, config.batch_size, config.microbatches)
    module = task.module(mc)
    rows = (train if train is not None else eval_sets[0].arrays)["input_ids"]
    dummy = jnp.ones((1, *rows.shape[1:-1], 8), jnp.int32)
    rng = jax.random.key(config.seed)
    boxed = jax.eval_shape(lambda r: module.init(r, dummy)["params"], rng)
    param_sh = sharding.logical_shardings(mesh, boxed)
    heads = tuple(task.head_names)
    # Only the heads are initialized: their outputs alone leave the jitted init, so XLA drops
    # the encoder's random init (and the forward pass) as dead code, a quicker compile.
    fresh_heads = jax.jit(
        lambda r: {h: nn.unbox(module.init(r, dummy)["params"])[h] for h in heads},
        out_shardings={h: param_sh[h] for h in heads})(jax.random.fold_in(rng, 1))
    keep, why = True, ""
    if config.random_init:  # the no-pretraining baseline: same model and tokenizer, new weights
        loaded = jax.jit(lambda r: nn.unbox(module.init(r, dummy)["params"]))(
            jax.random.fold_in(rng, 3))
        keep, why = False, "config.random_init"
    elif config.from_mnli:
        keep, why = False, "config.from_mnli: MNLI's encoder, a new head"
    elif config.head == "fresh":
        keep, why = False, "config.head='fresh'"
    elif head_task and not start.same_task(head_task, task.name) and any(
            h in loaded for h in heads):
        # A head trained for another task's labels means nothing here (SST-2's "1" is not
        # RTE's "not_entailment"); the paper's transfer (from MNLI) also starts a new head.
        keep, why = False, (f"the checkpoint's head was fine-tuned on {head_task}, this run "
                            f"is {task.name}")
        if config.do_train:
            logging.warning("%s: %s: starting a new head (config.from_mnli=PATH is the paper's "
                            "recipe for starting RTE, MRPC or STS-B from an MNLI model)",
                            source, why)
    if isinstance(task, runner.WscTask) and not config.random_init:
        start.require_mlm_head(source)(loaded)  # WSC scores candidates with the pretrained head
    if keep and task.labels and "classifier" in loaded:
        loaded = {**loaded, "classifier": start.align_labels(loaded["classifier"], head_labels,
                                                       task.labels, task.name, source)}
    params = start.merge_params(nn.unbox(boxed), fresh_heads, loaded, heads, source=source,
                          keep_heads=keep, fresh_reason=why, require_heads=not config.do_train)
    params = jax.device_put(params, param_sh)
    return Prepared(config, task, tok, tok_path, source, mc, module, mesh, param_sh, params,
                    train, n_train, eval_sets, test_sets)


def _init_state(p: Prepared, tx, fp16: bool):
    rep = sharding.replicated(p.mesh)
    create = lambda params: optim.TrainState.create(params, tx, fp16)  # noqa: E731
    abstract = jax.eval_shape(create, p.params)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, p.param_shardings,
                                   transform_non_params=lambda _: rep)
    state_sh = jax.tree.map(lambda _: rep, abstract).replace(params=p.param_shardings,
                                                             opt_state=opt_sh)
    return jax.jit(create, out_shardings=state_sh)(p.params), state_sh


def _to_global(mesh, batch: dict) -> dict:
    """This host's contiguous slice of a global numpy batch -> sharded jax.Arrays."""
    n, i = jax.process_count(), jax.process_index()
    local = {k: v[len(v) * i // n: len(v) * (i + 1) // n] for k, v in batch.items()}
    return sharding.host_batch_to_global(mesh, local)


def _take(arrays: dict, idx: np.ndarray) -> dict:
    """Rows `idx`; -1 marks padding rows (a copy of row 0 with weight 0)."""
    batch = {k: v[np.maximum(idx, 0)] for k, v in arrays.items()}
    batch["weight"] = batch["weight"] * (idx >= 0)
    return batch


def batches(arrays: dict, batch_size: int, seed: int, epoch: int, order=None, multiple: int = 0):
    """One epoch in a shuffled order (drawn from (seed, epoch)) or in `order` (a permutation of
    the rows: the task's, e.g. QNLI's with config.ranking_loss); the last batch is padded.
    `multiple` > 0 cuts each batch to its own longest row (`runner.trim`); the whole global
    batch is cut, before each host takes its slice, so every host gets the same shape."""
    n = len(arrays["input_ids"])
    if order is None:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = -(-n // batch_size)
    order = np.concatenate([order, np.full(steps * batch_size - n, -1)])
    for s in range(steps):
        yield runner.trim(_take(arrays, order[s * batch_size:(s + 1) * batch_size]), multiple)


def schedule_steps(config, rows: int) -> tuple[int, int]:
    """(steps per epoch, total steps): config.max_steps, else config.num_epochs epochs."""
    per_epoch = -(-rows // config.batch_size)
    return per_epoch, config.max_steps if config.max_steps > 0 else per_epoch * config.num_epochs


def train_batches(p: Prepared, total: int):
    """The run's training batches, epoch after epoch (in the task's order where it has one),
    `total` of them."""
    step, epoch = 0, 0
    while step < total:
        order = p.task.train_order(p.train, epoch) if hasattr(p.task, "train_order") else None
        for batch in batches(p.train, p.config.batch_size, p.config.seed, epoch, order,
                             batch_multiple(p)):
            yield batch
            step += 1
            if step == total:
                return
        epoch += 1


def predict(p_predict, params, mesh, arrays: dict, batch_size: int, multiple: int = 0):
    """Model outputs for every row of `arrays` (numpy pytree, N first); `multiple` > 0 cuts
    each batch to its own longest row (only for outputs without a length axis)."""
    n = len(arrays["input_ids"])
    inputs = {k: arrays[k] for k in (*INPUT_KEYS, "weight")}
    outs = []
    for s in range(0, n, batch_size):
        idx = np.arange(s, s + batch_size)
        batch = runner.trim(_take(inputs, np.where(idx < n, idx, -1)), multiple)
        outs.append(jax.device_get(p_predict(params, _to_global(mesh, batch))))
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs)


def _better(a: float, b: float | None) -> bool:
    a = -math.inf if a is None or math.isnan(a) else a
    return b is None or a > (-math.inf if math.isnan(b) else b)


# --------------------------------------------------------------------------------- run


def finetune(config, workdir: str) -> dict:
    """Fine-tunes and evaluates (or only evaluates: config.do_train=False); returns what
    results.json holds. Running out of device memory is a ValueError that says what to change
    (`sharding.memory_hint`)."""
    with sharding.memory_hint(config.mesh, config.batch_size, config.microbatches,
                              config.max_length):
        return _finetune(config, workdir)


def _finetune(config, workdir: str) -> dict:
    workdir = os.path.abspath(workdir)
    t_start = time.perf_counter()
    with input_checks():  # set-up: what is wrong here is the input (config, files, workdir)
        sharding.maybe_initialize_distributed()
        check_workdir(workdir, config)  # before reading anything: nothing is removed yet
        p = prepare(config)
    config, task = p.config, p.task
    start_workdir(workdir, config)  # every input is read and checked: now it is safe
    rep = sharding.replicated(p.mesh)
    eval_bs = eval_batch_size(p)
    metric = config.select_metric or task.metric
    if not config.do_train:
        return _evaluate_only(p, workdir, metric, eval_bs, t_start)

    # Schedule: the paper's 6% warmup, then linear decay to 0 at the last step.
    steps_per_epoch, total = schedule_steps(config, len(p.train["input_ids"]))
    if total <= 0:
        with input_checks():
            raise ValueError(f"nothing to train: config.num_epochs={config.num_epochs} and "
                             f"config.max_steps={config.max_steps} (config.do_train=False "
                             "evaluates the checkpoint without training)")
    optim_config = ml_collections.ConfigDict(dict(
        peak_learning_rate=config.learning_rate, warmup_steps=int(config.warmup_ratio * total),
        total_steps=total, b1=config.b1, b2=config.b2, eps=config.eps,
        weight_decay=config.weight_decay, decay_mask=config.decay_mask,
        grad_clip_norm=config.grad_clip_norm))
    tx, schedule = optim.make_optimizer(optim_config, p.params)
    fp16 = config.precision == "float16"
    state, state_sh = _init_state(p, tx, fp16)
    p.params = None  # the state owns them now
    step_fn = jax.jit(
        lambda s, b, r: train_step(s, b, r, module=p.module, task=task, tx=tx, schedule=schedule,
                                   microbatches=config.microbatches, fp16=fp16),
        in_shardings=(state_sh, None, rep), out_shardings=(state_sh, rep), donate_argnums=(0,))
    p_predict = predictor(p)
    logging.info("%s: %d train examples (%d rows), %d steps (%d per epoch), lr %g, batch %d",
                 task.name, p.train_examples, len(p.train["input_ids"]), total, steps_per_epoch,
                 config.learning_rate, config.batch_size)

    writer = observe.MetricWriter(workdir)
    evaluations, best, best_params, best_outputs, bad_evals = [], None, None, None, 0
    pending, tput = [], observe.Throughput()
    dropout_rng = make_dropout_rng(config, seed=config.seed)  # rbg by default (config)

    def evaluate(step: int, epoch: float):
        nonlocal best, best_params, best_outputs, bad_evals
        row, outputs = evaluate_dev(p, p_predict, state.params, eval_bs, metric)
        evaluations.append({"step": step, "epoch": epoch, **row})
        writer.write(step, {"epoch": epoch, **{f"eval_{k}": v for k, v in row.items()}})
        logging.info("step %d (epoch %.2f): %s", step, epoch,
                     ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
        if _better(row[metric], None if best is None else best[metric]):
            best, bad_evals = {"step": step, "epoch": epoch, **row}, 0
            best_params, best_outputs = sharding.to_host(state.params), outputs
        else:
            bad_evals += 1

    from tqdm import tqdm
    bar = tqdm(total=total, disable=jax.process_index() != 0 or not config.progress,
               dynamic_ncols=True)
    step = 0
    try:  # closed however the loop ends: left to its atexit hook, a traceback under Python 3.12
        for batch in train_batches(p, total):
            state, metrics = step_fn(state, _to_global(p.mesh, batch), dropout_rng)
            step += 1
            pending.append(metrics)
            sharding.wait_behind(pending)
            tput.add(int(batch["attention_mask"].sum()), int(batch["weight"].sum()))
            bar.update(1)
            if step % config.log_every == 0 or step == total:
                _log_train(writer, pending, tput, step, step / steps_per_epoch, fp16, bar)
                pending = []
            at_epoch_end = (step % steps_per_epoch == 0)
            if (step == total or (config.eval_every == 0 and at_epoch_end)
                    or (config.eval_every > 0 and step % config.eval_every == 0)):
                if pending:
                    _log_train(writer, pending, tput, step, step / steps_per_epoch, fp16, bar)
                    pending = []
                evaluate(step, round(step / steps_per_epoch, 4))
                if config.early_stopping_patience > 0 and \
                        bad_evals >= config.early_stopping_patience:
                    logging.warning("early stopping at step %d: no better %s in %d evaluations",
                                    step, metric, bad_evals)
                    break
    finally:
        bar.close()
        writer.close()

    # Best model, its dev predictions, test-set predictions, results.
    mc32 = dataclasses.replace(p.model_config, dtype=jnp.float32)
    extra = {"task": task.name, "metric": metric, "metrics": best, "source": p.source,
             **task.extra}
    if config.save_best:  # every process takes part in the save; process 0 writes
        best_dir = os.path.join(workdir, "best")
        checkpoint.save_model(best_dir, mc32, best_params, extra)
        if jax.process_index() == 0:
            p.tokenizer.save(os.path.join(best_dir, "tokenizer"))
    results = {k: v for k, v in best.items() if k not in ("step", "epoch")}
    tests = []
    if p.test_sets:
        tests = test_outputs(p, p_predict, jax.device_put(best_params, state_sh.params), eval_bs)
    results.update(write_predictions(p, best_outputs, tests, workdir))
    results.update({"task": task.name, "metric": metric, "step": best["step"],
                    "epoch": best["epoch"], "total_steps": total, "steps_run": step,
                    "train_examples": p.train_examples,
                    "eval_examples": {es.name or "dev": es.examples for es in p.eval_sets},
                    "init_checkpoint": p.source, "tokenizer": p.tokenizer_path,
                    "seconds": round(time.perf_counter() - t_start, 1),
                    "evaluations": evaluations})
    write_results(workdir, results)
    logging.info("%s: best %s %.4f at step %d -> %s", task.name, metric, best[metric],
                    best["step"], os.path.join(workdir, "results.json"))
    return results


def predictor(p: Prepared):
    """The jitted forward pass: (params in p.param_shardings, global batch) -> outputs,
    replicated."""
    return jax.jit(lambda params, b: predict_step(params, b, module=p.module),
                   in_shardings=(p.param_shardings, None),
                   out_shardings=sharding.replicated(p.mesh))


def batch_multiple(p: Prepared) -> int:
    """What each batch's length is rounded up to (config.pad_to_multiple_of), or 0: every batch
    at the data's longest row (SQuAD, whose outputs have a length axis)."""
    return p.config.get("pad_to_multiple_of", 0) if p.task.per_batch_length else 0


def eval_batch_size(p: Prepared) -> int:
    """config.eval_batch_size rounded up to a multiple of the data-parallel shards."""
    shards = _data_shards(p.mesh)
    return -(-p.config.eval_batch_size // shards) * shards


def evaluate_dev(p: Prepared, p_predict, params, eval_bs: int, metric: str) -> tuple[dict, list]:
    """Dev metrics of `params` over every dev set, and the model's outputs on each."""
    row, outputs = {}, []
    for es in p.eval_sets:
        outputs.append(predict(p_predict, params, p.mesh, es.arrays, eval_bs, batch_multiple(p)))
        row.update(es.score(outputs[-1]))
    if metric not in row:  # e.g. SQuAD v2.0's NoAns_f1 on a dev subset without such questions
        raise KeyError(f"config.select_metric={metric!r} is not among the metrics "
                       f"{sorted(row)} of {p.task.name}")
    return row, outputs


def _evaluate_only(p: Prepared, workdir: str, metric: str, eval_bs: int, t_start) -> dict:
    """config.do_train=False: the checkpoint's dev metrics and prediction files, as training
    writes them for its best model (no best/, no training logs)."""
    p_predict = predictor(p)
    row, outputs = evaluate_dev(p, p_predict, p.params, eval_bs, metric)
    results = dict(row)
    results.update(write_predictions(p, outputs, test_outputs(p, p_predict, p.params, eval_bs),
                                     workdir))
    results.update({"task": p.task.name, "metric": metric, "do_train": False, "step": 0,
                    "epoch": 0.0, "total_steps": 0, "steps_run": 0, "train_examples": 0,
                    "eval_examples": {es.name or "dev": es.examples for es in p.eval_sets},
                    "init_checkpoint": p.source, "tokenizer": p.tokenizer_path,
                    "seconds": round(time.perf_counter() - t_start, 1),
                    "evaluations": [{"step": 0, "epoch": 0.0, **row}]})
    write_results(workdir, results)
    logging.warning("%s (evaluation only): %s %.4f -> %s", p.task.name, metric, row[metric],
                    os.path.join(workdir, "results.json"))
    return results


def write_results(workdir: str, results: dict) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)


def _data_shards(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


# What a fine-tuning run writes in its workdir (globs), removed before a new run writes its own.
OUTPUTS = ("results.json", "metrics.jsonl", "tensorboard", "best", "submission",
           "predictions.json", "null_odds.json", "dev_predictions*", "test_predictions.json")
# Evaluation only writes no model and no training logs, so it leaves those of a run in place
# (evaluating DIR/best into DIR then refreshes DIR's results and prediction files).
EVAL_ONLY_OUTPUTS = tuple(x for x in OUTPUTS if x not in ("metrics.jsonl", "tensorboard", "best"))


def _outputs(workdir: str, do_train: bool) -> list[str]:
    return sorted(p for pattern in (OUTPUTS if do_train else EVAL_ONLY_OUTPUTS)
                  for p in glob.glob(os.path.join(glob.escape(workdir), pattern)))


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_workdir(workdir: str, config) -> None:
    """Refuses, before anything is read, a run that would replace a finished one without
    config.overwrite=True, or that would delete its own inputs when it clears old outputs."""
    results = os.path.join(workdir, "results.json")
    if os.path.exists(results) and not config.overwrite:
        raise FileExistsError(f"{results} exists: this workdir holds a finished run (set "
                              "config.overwrite=True to replace it)")
    for key in ("init_checkpoint", "from_mnli", "tokenizer"):
        path = config[key]
        if not path:
            continue
        for out in _outputs(workdir, config.do_train):
            if _inside(path, out):
                raise ValueError(f"config.{key}={path!r} lies inside {out}, which this run "
                                 f"would delete before writing its own outputs; use another "
                                 f"--workdir (or copy the checkpoint out of {workdir} first)")


def start_workdir(workdir: str, config) -> None:
    """A fine-tuning run starts clean: its own outputs from an earlier run are removed, and
    its config is written as config.json."""
    if jax.process_index() == 0:
        for path in _outputs(workdir, config.do_train):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def _log_train(writer, pending, tput, step, epoch, fp16, bar) -> None:
    rows = jax.device_get(pending)
    for i, r in enumerate(rows):
        if not math.isfinite(float(r["loss"])) and not (fp16 and r["skipped"]):
            raise FloatingPointError(f"loss is {float(r['loss'])} at step "
                                     f"{step - len(rows) + i + 1}; stopping")
    tok_s, ex_s = tput.rates()
    tput.reset()
    row = {k: float(np.mean([r[k] for r in rows])) for k in ("loss", "grad_norm")}
    row.update(learning_rate=float(rows[-1]["learning_rate"]), epoch=round(epoch, 4),
               tokens_per_sec=tok_s, examples_per_sec=ex_s,
               skipped_steps=int(sum(int(r["skipped"]) for r in rows)))
    writer.write(step, row)
    bar.set_postfix(loss=f"{row['loss']:.4f}")


def test_arrays(p: Prepared) -> list[tuple[str, dict]]:
    """(name, model inputs) of each of `p.test_sets` (config.predict_test), in their order."""
    # RACE's test sets are EvalSets; GLUE's (task, split, examples, arrays).
    return [(f"{p.task.name} test", t.arrays) if isinstance(t, runner.EvalSet)
            else (f"{t[0].name} {t[1]}", t[3]) for t in p.test_sets]


def test_outputs(p: Prepared, p_predict, params, eval_bs: int) -> list:
    """The model's outputs on each of `p.test_sets` (`params` on the mesh), in their order."""
    return [predict(p_predict, params, p.mesh, a, eval_bs, batch_multiple(p))
            for _, a in test_arrays(p)]


def write_predictions(p: Prepared, dev_outputs: list, tests: list, workdir: str) -> dict:
    """Dev prediction files from the outputs of the model being reported (`dev_outputs`, one
    per dev set); with config.predict_test (`tests`, the outputs on each test set), GLUE
    leaderboard files under workdir/submission and RACE's test accuracy and predictions.
    Returns the entries that go to results.json."""
    files, leaderboard, out = {}, {}, {}
    for es, outputs in zip(p.eval_sets, dev_outputs):
        if es.files is not None:
            files.update(es.files(outputs))
    if isinstance(p.task, runner.RaceTask):
        for es, outputs in zip(p.test_sets, tests):
            out.update(es.score(outputs))
            out["test_examples"] = es.examples  # config.max_eval_examples applies to test too
            files.update(es.files(outputs))
    else:
        for (task, split, examples, _), outputs in zip(p.test_sets, tests):
            pred = p.task.submission_predictions(task, examples, outputs)
            name = os.path.join("submission", task.submission[split])
            leaderboard[name] = glue.format_predictions(task, pred, [ex.idx for ex in examples])
            logging.info("%s %s: %d predictions -> %s", task.name, split, len(examples),
                         os.path.join(workdir, name))
            out.setdefault("submission", []).append(name)
    if jax.process_index() == 0:  # every process holds the same predictions; one writes them
        for name, text in {**files, **leaderboard}.items():
            os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(text)
    out["predictions"] = sorted(files)
    return out


def main(argv):
    del argv
    config, name = cli_config()
    workdir = flags.FLAGS.workdir or os.path.join("workdir", "finetune", name)
    results = finetune(config, workdir)
    metrics = {k: v for k, v in results.items()
               if isinstance(v, float) and k not in ("epoch", "seconds")}
    how = ("evaluation only" if results.get("do_train") is False else
           f"best of {len(results['evaluations'])} evaluation(s), step {results['step']}")
    if jax.process_index() == 0:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"{results['task']} ({how}): {scores}", flush=True)


if __name__ == "__main__":
    # Flags are defined only when run as a program (as robertax.train does), so importing this
    # module defines none.
    run_cli(main, os.path.join(REPO, "configs", "finetune", "sst2.py"),
            "Fine-tuning config file.", "Output directory (default: workdir/finetune/<config>).")
