"""Pretraining entry point.

    python -m robertax.train                                   # tiny model, built-in corpus, CPU
    python -m robertax.train --config=configs/large.py --workdir=DIR --config.key=value

One `main()` in steps: mesh -> data -> model and sharded state -> checkpoint/resume -> jitted
step -> loop (log, eval, checkpoint) -> summary. Writes to --workdir: `config.json`,
`checkpoints/` (Orbax: train state + data iterator), `metrics.jsonl` and `tensorboard/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # config files import `configs.base`
    sys.path.insert(0, _REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from robertax import (  # noqa: E402
    checkpoint, cli, hash_rng, observe, optim, perf, sharding, step as step_lib)
from robertax.model import RobertaConfig, RobertaForPretraining  # noqa: E402

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
NSP_FORMATS = ("segment_pair", "sentence_pair")
PACKED_FORMATS = ("doc_sentences", "sentence_pair")


def model_config(run_config, **overrides) -> RobertaConfig:
    """The model section of a run config (ConfigDict or dict), in the run's compute dtype."""
    precision = run_config["precision"]
    if precision not in PRECISIONS:
        raise ValueError(f"config.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return RobertaConfig.from_dict(dict(run_config["model"]),
                                   **{"dtype": PRECISIONS[precision], **overrides})


@dataclasses.dataclass
class Run:
    """What `build` makes: the pieces the loop (and benchmarks, tests) use."""
    model_config: RobertaConfig
    module: RobertaForPretraining
    state: optim.TrainState
    abstract_state: optim.TrainState  # ShapeDtypeStructs with shardings (for restore)
    train_step: object  # jitted (state, batch, dropout_rng) -> (state, metrics); state donated
    eval_step: object  # jitted (params, batch) -> sums


def build(config, mesh, donate: bool = True, materialize: bool = True) -> Run:
    """Model, optimizer, sharded train state and the jitted steps, shardings stated once.
    materialize=False leaves Run.state None (to lower and compile the steps ahead of time)."""
    import flax.linen as nn
    mc = model_config(config)
    module = RobertaForPretraining(mc, nsp=config.data.format in NSP_FORMATS)
    init_rng = jax.random.key(config.seed)
    params_shape = jax.eval_shape(
        lambda r: module.init(r, jnp.ones((1, 8), jnp.int32))["params"], init_rng)
    tx, schedule = optim.make_optimizer(config.optim, nn.unbox(params_shape))
    create, abstract_state, state_sh = state_layout(config, module, tx, mesh, init_rng)
    state = jax.jit(create, out_shardings=state_sh)(init_rng) if materialize else None
    packed = config.data.format in PACKED_FORMATS
    train_fn = step_lib.make_train_step(module, tx, schedule, microbatches=config.microbatches,
                                        packed=packed, fp16=config.precision == "float16")
    rep = sharding.replicated(mesh)
    p_train = jax.jit(train_fn, in_shardings=(state_sh, None, rep),
                      out_shardings=(state_sh, rep), donate_argnums=(0,) if donate else ())
    p_eval = jax.jit(step_lib.make_eval_step(module, packed=packed),
                     in_shardings=(state_sh.params, None), out_shardings=rep)
    return Run(mc, module, state, abstract_state, p_train, p_eval)


# config.dropout_rng -> JAX key implementation
DROPOUT_RNGS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg",
                "hash": hash_rng.HASH_IMPL}


def make_dropout_rng(config, seed: int | None = None) -> jax.Array:
    """The base key of the dropout masks (folded with the step inside the train step), from
    `seed` (default config.seed + 1).

    threefry (JAX's default) is bit-reproducible everywhere; rbg generates dropout masks much
    faster on accelerators, where threefry's hashing can cost a large share of the step; hash
    (`robertax.hash_rng`) is a counter-based hash like threefry, fused into the masks' uses,
    with under a fifth of its integer work."""
    impl = config.get("dropout_rng", "threefry")
    if impl not in DROPOUT_RNGS:
        raise ValueError(f"config.dropout_rng must be one of {', '.join(DROPOUT_RNGS)}, "
                         f"got {impl!r}")
    model = config.get("model") or {}
    if model.get("fused_norm") and impl != "hash" and model.get("dropout_rate", 0.1) > 0:
        raise ValueError("config.model.fused_norm draws its dropout masks with the hash "
                         f"generator: set config.dropout_rng='hash' (got {impl!r})")
    seed = config.seed + 1 if seed is None else seed
    return jax.random.key(seed, impl=DROPOUT_RNGS[impl])


def state_layout(config, module, tx, mesh, rng):
    """How the train state is made and laid out, without making it: (create(rng) -> state,
    its ShapeDtypeStructs with shardings, its shardings). `jax.jit(create,
    out_shardings=shardings)(rng)` creates it directly in its sharded layout (never whole on
    one device)."""
    L = config.data.max_length
    dummy = jnp.ones((1, L), jnp.int32)
    boxed = jax.eval_shape(lambda r: module.init(r, dummy)["params"], rng)
    param_sh = sharding.logical_shardings(mesh, boxed)
    rep = sharding.replicated(mesh)
    fp16 = config.precision == "float16"

    def create(r):
        import flax.linen as nn
        return optim.TrainState.create(nn.unbox(module.init(r, dummy)["params"]), tx, fp16)

    abstract = jax.eval_shape(create, rng)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, param_sh,
                                   transform_non_params=lambda _: rep)
    state_sh = jax.tree.map(lambda _: rep, abstract).replace(params=param_sh, opt_state=opt_sh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, state_sh)
    return create, abstract, state_sh


def check_corpus(config, shard_dir: str) -> dict:
    from robertax.data import shards
    manifest = shards.read_manifest(shard_dir)
    if manifest["vocab_size"] != config.model.vocab_size:
        raise ValueError(f"{shard_dir}/manifest.json: the corpus was tokenized with a vocabulary "
                         f"of {manifest['vocab_size']}, but config.model.vocab_size is "
                         f"{config.model.vocab_size}: pass --config.model.vocab_size="
                         f"{manifest['vocab_size']} (a tokenizer trained on little text can "
                         "stop short of the size asked for)")
    return manifest


_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))  # one computation for all the sums


def evaluate(config, eval_fn, params, mesh, shard_dir) -> dict | None:
    """Held-out MLM loss over up to `eval_batches` batches of `batch_size` rows of the valid
    split, run `microbatches` pieces at a time (so the held-out rows do not depend on it)."""
    from robertax.data import pipeline
    batch_size = config.batch_size // config.microbatches
    try:
        ds = pipeline.make_dataset(config.data, shard_dir, "valid", batch_size=batch_size,
                                   seed=config.data.seed + 1, process_index=jax.process_index(),
                                   process_count=jax.process_count(), epochs=1)
    except ValueError as e:  # e.g. a validation split smaller than one batch
        logging.warning("no evaluation: %s", e)
        return None
    # Hosts may hold one batch more or less of an uneven split: all run as many as the least.
    batches = min(config.eval_batches * config.microbatches,
                  int(sharding.from_all_processes(len(ds)).min()))
    totals, queued = None, []
    for batch in pipeline.iterate(ds[:batches]):
        sums = eval_fn(params, sharding.host_batch_to_global(mesh, step_lib.device_batch(batch)))
        totals = sums if totals is None else _add(totals, sums)
        queued.append(totals)  # 2 computations a batch
        sharding.wait_behind(queued)
        del queued[:-sharding.IN_FLIGHT]  # the older ones are done
    if totals is None:
        return None
    totals = jax.device_get(totals)
    loss = float(totals["mlm_nll"] / max(totals["mlm_count"], 1.0))
    row = {"eval_loss": loss, "eval_loss_bits": loss / math.log(2),
           "eval_perplexity": math.exp(min(loss, 50.0)),
           "eval_accuracy": float(totals["mlm_correct"] / max(totals["mlm_count"], 1.0))}
    if "nsp_nll" in totals:
        row["eval_nsp_accuracy"] = float(totals["nsp_correct"] / totals["nsp_count"])
    return row


# Settings a run may change when it resumes: how it runs and reports, not what it computes
# (gradient accumulation and the mesh give the same steps; the model keys are speed knobs).
RESUME_MAY_CHANGE = (
    "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
    "microbatches", "mesh.", "data.num_workers", "data.shard_dir", "model.attention",
    "model.remat", "model.scan_unroll", "model.layer_norm_vjp", "model.attention_vjp",
    "model.fold_attention_biases", "model.gather_onehot", "model.cpu_matmul")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume(config, workdir: str) -> None:
    """A run resumed from a checkpoint must be the run that wrote it: settings that change
    what it computes (model, data, optimizer and schedule, batch size, precision, seeds) must
    equal those in workdir/config.json. Keys that config.json lacks (added to robertax since)
    are not compared."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = _flat(json.load(f))
    now = _flat(json.loads(config.to_json_best_effort()))
    changed = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k]
                     and not any(k == m or (m.endswith(".") and k.startswith(m))
                                 for m in RESUME_MAY_CHANGE))
    if not changed:
        return
    lines = [f"  {k}: {saved[k]!r} -> {now[k]!r}" for k in changed]
    hint = ""
    if "optim.total_steps" in changed:
        hint = ("\noptim.total_steps sets where the linear decay ends, so raising it on resume "
                "restarts the learning rate partway up its schedule (the paper's longer runs, "
                "Table 4, are runs of their own).")
    raise ValueError(
        f"{workdir} holds a run with other settings; resuming it with these would mix two "
        "runs:\n" + "\n".join(lines) + hint + f"\nUse a new --workdir, or, to continue this "
        f"run anyway, edit {path} (the run's record) to the new values.")


class _Preemption:
    """SIGTERM (a preempted job) asks the loop to checkpoint and exit cleanly. With several
    processes they must stop at the same step: JAX's preemption service (which
    jax.distributed.initialize starts) hears the signal on any of them and names a step all
    of them reach. Only this loop asks the service (see robertax.checkpoint._Manager). With
    the service turned off, several processes keep SIGTERM's default: they end, and the run
    resumes from its last periodic checkpoint."""

    def __init__(self):
        self.requested = False
        several = jax.process_count() > 1
        self.service = several and bool(jax.config.jax_enable_preemption_service)
        if several:
            if not self.service:
                logging.warning("jax_enable_preemption_service is off: SIGTERM ends these "
                                "processes without a checkpoint")
            return
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some notebooks)
            pass

    def _handle(self, *_):
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether every process stops after `step`; call it at every step on each of them."""
        if self.service:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
            self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def train(config, workdir: str, stop_at: int | None = None) -> dict:
    """Runs (or resumes) pretraining; returns the summary numbers. `stop_at` ends this run early
    at that step with a checkpoint, as a preempted job would. Running out of device memory is
    a ValueError that says what to change (`sharding.memory_hint`)."""
    with sharding.memory_hint(config.mesh, config.batch_size, config.microbatches,
                              config.data.max_length, config.model.get("remat")):
        return _train(config, workdir, stop_at)


def _train(config, workdir: str, stop_at: int | None) -> dict:
    from robertax.data import pipeline

    with input_checks():  # set-up: what is wrong here is the input (config, files, workdir)
        workdir = os.path.abspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        sharding.maybe_initialize_distributed()
        ckpt_dir = os.path.join(workdir, "checkpoints")
        resuming = os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))
        if resuming:
            check_resume(config, workdir)
        if config.optim.total_steps < config.optim.warmup_steps:
            logging.warning("optim.total_steps %d < optim.warmup_steps %d: the learning rate "
                            "never reaches its peak %g nor decays", config.optim.total_steps,
                            config.optim.warmup_steps, config.optim.peak_learning_rate)

        # 1. Mesh.
        mesh = sharding.make_mesh(config.mesh)
        sharding.check_batch_divisible(mesh, config.batch_size, config.microbatches)
        logging.info("mesh %s on %d %s device(s)", dict(mesh.shape), jax.device_count(),
                     jax.devices()[0].platform)

        # 2. Data: each host reads its own slice of every global batch. A corpus still to be
        # tokenized is done by process 0 first, so hosts sharing a disk do not race to write it.
        shard_dir = sharding.first_process_first(lambda: pipeline.resolve_shard_dir(config),
                                                 "prepare the corpus")
        check_corpus(config, shard_dir)
        train_iter = pipeline.make_iterator(
            config.data, shard_dir, "train", batch_size=config.batch_size, seed=config.data.seed,
            process_index=jax.process_index(), process_count=jax.process_count())

        # 3. Model, optimizer, the sharded train state and the jitted steps.
        run = build(config, mesh)
        mc, state, p_train, p_eval = run.model_config, run.state, run.train_step, run.eval_step
        dropout_rng = make_dropout_rng(config)

        # 4. Resume from the latest checkpoint, if any (state and data position).
        ckpt = checkpoint.Checkpointer(ckpt_dir, keep=config.keep_checkpoints)
        start = ckpt.latest_step()
        if start is not None:
            state = ckpt.restore(run.abstract_state, train_iter)
            if jax.process_index() == 0:
                print(f"resumed from step {start} ({ckpt_dir})", flush=True)
        start = int(jax.device_get(state.step))
        if jax.process_index() == 0:  # the run's record, once it is known to be this run
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        if start >= config.optim.total_steps and jax.process_index() == 0:
            print(f"{workdir} already finished: step {start} of {config.optim.total_steps}",
                  flush=True)
    fp16 = config.precision == "float16"

    flops = perf.flops_per_token(mc.num_layers, mc.hidden_size, config.data.max_length,
                                 mc.padded_vocab_size,
                                 config.data.max_predictions / config.data.max_length,
                                 mc.intermediate_size)
    peak = perf.device_peak_flops()
    writer = observe.MetricWriter(workdir, resumed_at=start)
    if writer.dropped:
        logging.warning("metrics.jsonl: dropped %d row(s) past step %d, the checkpoint this run "
                        "resumes from (the interrupted run logged them)", writer.dropped, start)
    preempt = _Preemption()
    total = config.optim.total_steps
    first = last = eval_first = eval_last = None
    pending, tput, overflow = [], observe.Throughput(), 0
    tokens_seen, t_start = 0, time.perf_counter()
    window = np.zeros(2, np.int64)  # this host's tokens and MLM overflow since the last log

    # 6. The loop.
    # The writer and the bar are closed however the loop ends: an exception (out of memory, a
    # non-finite loss, Ctrl-C) left tensorboardX's writer to its atexit hook, which Python 3.12
    # cannot run ("can't create new thread at interpreter shutdown") and reports as a traceback.
    from tqdm import tqdm
    bar = tqdm(total=total, initial=start, disable=jax.process_index() != 0, dynamic_ncols=True)
    step = start
    try:
        while step < total:
            batch = next(train_iter)
            window += ((batch["segment_ids"] != 0).sum(),
                       batch["mlm_overflow"].sum() if "mlm_overflow" in batch else 0)
            gbatch = sharding.host_batch_to_global(mesh, step_lib.device_batch(batch))
            state, metrics = p_train(state, gbatch, dropout_rng)
            step += 1
            pending.append(metrics)
            sharding.wait_behind(pending)
            bar.update(1)
            stop = preempt.reached(step) or step == stop_at
            if step % config.log_every == 0 or step == total or stop:  # stop: the partial window
                rows = jax.device_get(pending)
                ntok, novf = (int(x) for x in sharding.from_all_processes(window).sum(0))
                tput.add(ntok, config.batch_size * len(rows))
                tokens_seen, overflow, window[:] = tokens_seen + ntok, overflow + novf, 0
                pending = []
                for i, r in enumerate(rows):
                    if not math.isfinite(float(r["loss"])) and not (fp16 and r["skipped"]):
                        ckpt.wait()
                        raise FloatingPointError(
                            f"loss is {float(r['loss'])} at step {step - len(rows) + i + 1}; "
                            f"stopping. The last good checkpoint (step {ckpt.latest_step()}) is "
                            f"kept in {ckpt.directory}")
                tok_s, seq_s = tput.rates()
                tput.reset()
                last = {k: float(np.mean([r[k] for r in rows])) for k in rows[-1]}
                last.update(loss_bits=last["loss"] / math.log(2), tokens_per_sec=tok_s,
                            seqs_per_sec=seq_s,
                            skipped_steps=int(jax.device_get(state.skipped_steps)),
                            learning_rate=float(rows[-1]["learning_rate"]),
                            mlm_overflow_tokens=overflow)
                m = perf.mfu(tok_s, flops.total, jax.device_count(), peak)
                if m is not None:
                    last["mfu"] = m
                last.pop("skipped", None)
                first = first or last  # the same dict while there has been one window
                writer.write(step, last)
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{tok_s:,.0f}")
            if step % config.eval_every == 0 or step == total:
                row = evaluate(config, p_eval, state.params, mesh, shard_dir)
                if row:
                    eval_first, eval_last = eval_first or row, row
                    writer.write(step, row)
                    logging.info("step %d: eval loss %.4f", step, row["eval_loss"])
            if step % config.checkpoint_every == 0 or step == total or stop:
                ckpt.save(step, state, train_iter, force=True)
            if stop:
                if jax.process_index() == 0:
                    why = f"stop_at={stop_at}" if step == stop_at else "SIGTERM"
                    print(f"stopped at step {step} of {total} ({why}); checkpoint saved: the same "
                          "command resumes", flush=True)
                break
    finally:
        bar.close()
        writer.close()
    ckpt.close()
    seconds = time.perf_counter() - t_start
    result = {"steps": step - start, "tokens": tokens_seen, "seconds": seconds,
              "first": first, "last": last, "eval_first": eval_first, "eval_last": eval_last}
    if first and last and jax.process_index() == 0:
        print(observe.summary(first, last, step - start, tokens_seen, seconds, eval_first,
                              eval_last), flush=True)
    return result


def cli_config() -> tuple[ml_collections.ConfigDict, str]:
    """For a program's main: the --config flag's config and its file's name (the default
    workdir's last part). Quiets absl logging to warnings unless --verbosity is given (Orbax
    logs every save at INFO)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    return flags.FLAGS.config, os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]


def _unknown_key_message(default_config: str, error: Exception) -> str:
    """The error for a --config.KEY=VALUE override whose key the config lacks: which flag, and
    the config's nearest keys (ml_collections says only "'lr'" for a top-level key)."""
    import difflib
    import importlib.util
    path = default_config
    for arg in sys.argv[1:]:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":")[0]
    try:
        spec = importlib.util.spec_from_file_location("_robertax_cli_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        keys = list(_flat(json.loads(module.get_config().to_json_best_effort())))
    except Exception:  # pylint: disable=broad-except  (the hint is optional)
        keys = []
    bad = []
    for arg in sys.argv[1:]:
        if arg.startswith("--config.") and "=" in arg:
            key = arg[len("--config."):].split("=", 1)[0]
            if keys and key not in keys:
                near = difflib.get_close_matches(key, keys, n=2, cutoff=0.6)
                bad.append(f"--config.{key}" + (f" (did you mean {', '.join(near)}?)"
                                                 if near else ""))
    if bad:
        return f"error: {path} has no key " + "; ".join(bad)
    return f"error: a --config override failed: {error}"


@contextlib.contextmanager
def input_checks():
    """Marks the errors raised inside (a run's set-up: its config, files and workdir) as bad
    input, which `run_cli` shows as one line; callers of the library still get the exception
    itself. ROBERTAX_TRACEBACK=1 shows the traceback."""
    try:
        yield
    except (OSError, ValueError, KeyError) as e:
        e.robertax_bad_input = True
        raise


def run_cli(main_fn, default_config: str, about: str, workdir_help: str) -> None:
    """Defines --config (a config file, overridable per key) and --workdir, and runs `main_fn`
    under absl. An override naming a key the config lacks, or bad input found while a run is
    set up (`input_checks`), is one line, "error: ...", not a traceback."""
    try:
        config_flags.DEFINE_config_file("config", default_config, about, lock_config=True)
    except (AttributeError, KeyError) as e:  # ml_collections applies overrides here
        raise SystemExit(_unknown_key_message(default_config, e)) from None
    flags.DEFINE_string("workdir", None, workdir_help)

    def parse(argv):
        try:
            return app.parse_flags_with_usage(argv)
        except (AttributeError, KeyError) as e:  # with --config=FILE, overrides apply here
            raise SystemExit(_unknown_key_message(default_config, e)) from None

    def run(argv):
        try:
            return main_fn(argv)
        except cli.BAD_INPUT as e:
            if not getattr(e, "robertax_bad_input", False) or os.environ.get(
                    "ROBERTAX_TRACEBACK"):
                raise
            raise SystemExit(cli.error_line(e)) from None

    app.run(run, flags_parser=parse)


def main(argv):
    del argv
    config, name = cli_config()
    train(config, flags.FLAGS.workdir or os.path.join("workdir", name))


if __name__ == "__main__":
    # Flags are defined only when run as a program, so other tools can import this module.
    run_cli(main, os.path.join(_REPO, "configs", "tiny.py"), "Training config file.",
            "Output directory (default: workdir/<config name>).")
