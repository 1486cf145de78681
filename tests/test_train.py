"""The pretraining entry point end to end: the loss falls, outputs are written, resume is exact."""

import json
import math
import os
import re

import pytest

from configs import tiny
from robertax import observe, train


def config(steps, **kw):
    c = tiny.get_config()
    c.optim.total_steps = steps
    c.optim.warmup_steps = 5
    c.batch_size = 16
    c.log_every = 1
    c.eval_every = 1000
    c.eval_batches = 2
    c.checkpoint_every = 1000
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_resume_equals_uninterrupted_run(tmp_path):
    """Train 2N steps, versus N steps, stop, resume, N more: the same losses, bit for bit."""
    n = 4
    train.train(config(2 * n), str(tmp_path / "full"))
    full = [r["loss"] for r in observe.read_metrics(str(tmp_path / "full")) if "loss" in r]
    train.train(config(2 * n), str(tmp_path / "split"), stop_at=n)
    assert os.path.isdir(tmp_path / "split" / "checkpoints" / str(n))
    train.train(config(2 * n), str(tmp_path / "split"))  # resumes from step n
    rows = observe.read_metrics(str(tmp_path / "split"))
    split = [r["loss"] for r in rows if "loss" in r]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 2 * n + 1))
    assert len(full) == 2 * n
    assert split == full  # bitwise on the CPU


def test_resume_with_other_settings_is_refused(tmp_path):
    """A checkpointed run resumes only with the settings that made it (its config.json), except
    those that change how it runs, not what it computes (logging, microbatches, the mesh)."""
    wd = str(tmp_path / "run")
    train.train(config(6), wd, stop_at=2)
    record = open(os.path.join(wd, "config.json")).read()
    with pytest.raises(ValueError, match=r"batch_size: 16 -> 8(.|\n)*new --workdir"):
        train.train(config(6, batch_size=8), wd)
    longer = config(6)
    longer.optim.total_steps = 9
    with pytest.raises(ValueError, match=r"optim.total_steps: 6 -> 9(.|\n)*linear decay"):
        train.train(longer, wd)
    assert open(os.path.join(wd, "config.json")).read() == record  # the record is kept
    train.train(config(6, log_every=2, microbatches=2), wd)  # how it runs may change
    assert [r["step"] for r in observe.read_metrics(wd) if "loss" in r] == [1, 2, 4, 6]


def test_interrupted_runs_log_each_step_once(tmp_path):
    """A stop logs its partial window; a run killed after its last checkpoint logged steps that
    the resumed run logs again, so those rows are dropped first (each step once, same values).
    Attention runs through the fused kernel (model.attention="pallas"), whose attention-dropout
    masks are hashed from the step's dropout key: the repeated steps draw the same masks."""
    wd = str(tmp_path / "run")
    c = config(6, log_every=4, checkpoint_every=2)
    c.model.attention = "pallas"
    train.train(c, wd, stop_at=3)
    assert [r["step"] for r in observe.read_metrics(wd) if "loss" in r] == [3]  # steps 1-3
    train.train(c, wd)
    before = [r for r in observe.read_metrics(wd) if "loss" in r]
    assert [r["step"] for r in before] == [3, 4, 6]
    # As if killed after logging step 6 but before its checkpoint: resume from step 4.
    import shutil
    shutil.rmtree(os.path.join(wd, "checkpoints", "6"))
    train.train(c, wd)
    after = [r for r in observe.read_metrics(wd) if "loss" in r]
    assert [r["step"] for r in after] == [3, 4, 6]
    assert after[-1]["loss"] == before[-1]["loss"]  # steps 5-6 again, bit for bit
    # TensorBoard drops its own copies by the purge marker: a SessionLog START at step 5.
    starts = [e.step for e in tensorboard_events(os.path.join(wd, "tensorboard"))
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert 5 in starts


def tensorboard_events(directory):
    """Every event in a TensorBoard directory's files (TFRecord: length, crc, data, crc)."""
    import glob
    import struct
    from tensorboardX.proto import event_pb2
    for path in sorted(glob.glob(os.path.join(directory, "events.*"))):
        data, i = open(path, "rb").read(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            yield event
            i += 12 + n + 4


def test_eval_rows_do_not_depend_on_microbatches(tmp_path):
    """eval_batches counts batches of batch_size rows, whatever the gradient accumulation."""
    losses = []
    for micro in (1, 2):
        c = config(2, microbatches=micro, eval_every=2)
        c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
        wd = str(tmp_path / f"m{micro}")
        train.train(c, wd)
        losses.append([r["eval_loss"] for r in observe.read_metrics(wd) if "eval_loss" in r])
    assert len(losses[0]) == 1 and losses[0][0] == pytest.approx(losses[1][0], abs=1e-4)


def test_main_job_loss_falls_and_writes_outputs(tmp_path, capsys):
    c = config(60)
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 30
    result = train.train(c, str(tmp_path))
    rows = observe.read_metrics(str(tmp_path))
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    # From about ln(V) (8192 -> 9.01 nats) down by well over half a nat in 60 small steps.
    assert abs(train_rows[0]["loss"] - math.log(8192)) < 0.6
    assert train_rows[0]["loss"] - train_rows[-1]["loss"] > 0.7
    assert [r["step"] for r in eval_rows] == [30, 60]
    assert eval_rows[-1]["eval_loss"] < eval_rows[0]["eval_loss"]
    for key in ("learning_rate", "tokens_per_sec", "loss_bits", "grad_norm", "mlm_accuracy"):
        assert key in train_rows[-1]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["30", "60"]
    assert os.listdir(tmp_path / "tensorboard")
    assert json.load(open(tmp_path / "config.json"))["model"]["vocab_size"] == 8192
    assert result["steps"] == 60 and result["tokens"] > 60 * 16 * 100
    printed = capsys.readouterr().out  # the summary: first and last window, two evaluations
    fell = float(printed.split("; fell ")[1].split()[0])
    assert fell == pytest.approx(train_rows[0]["loss"] - train_rows[-1]["loss"], abs=1e-3)
    assert f"eval loss  {eval_rows[0]['eval_loss']:.3f} -> {eval_rows[-1]['eval_loss']:.3f}" \
        in printed


def test_summary_with_one_logging_window_claims_no_fall():
    row = {"loss": 8.958}
    ev = {"eval_loss": 8.749, "eval_perplexity": math.exp(8.749)}
    text = observe.summary(row, row, 3, 10_849, 5.5, ev, ev)  # one window, one evaluation
    assert "fell" not in text and "->" not in text
    assert (f"train loss 8.958 nats (perplexity {math.exp(8.958):.1f}) over the run's one "
            "logging window; set log_every below 3 steps") in text
    assert f"eval loss  8.749 nats (perplexity {math.exp(8.749):.1f}), one evaluation" in text
    two = observe.summary({"loss": 9.0}, {"loss": 8.5}, 40, 1, 1.0)
    assert "train loss 9.000 -> 8.500 nats" in two and "fell 0.500 nats" in two


def test_nan_loss_stops_with_the_step(tmp_path):
    c = config(6)
    c.optim.peak_learning_rate = 1e30  # diverges at once
    c.optim.warmup_steps = 1
    with pytest.raises(FloatingPointError, match="at step"):
        train.train(c, str(tmp_path))


def test_text_corpus_is_preprocessed_and_trains(tmp_path, test_data, monkeypatch):
    """config.data.corpus may name text files: they are tokenized once, then trained on."""
    from robertax import tokenizer, tokenizer_training
    monkeypatch.setenv("ROBERTAX_CACHE", str(tmp_path / "cache"))
    text = str(test_data / "text" / "tinyshakespeare" / "input.txt")
    tok_dir = str(tmp_path / "tok")
    tokenizer_training.train_byte_bpe([text], vocab_size=1000, out_dir=tok_dir)
    vocab = tokenizer.load(tok_dir).vocab_size
    c = config(3)
    c.data.corpus = text
    c.data.tokenizer = tok_dir
    c.data.valid_fraction = 0.0
    c.model.vocab_size = vocab
    result = train.train(c, str(tmp_path / "run"))
    assert result["steps"] == 3 and math.isfinite(result["last"]["loss"])
    made = os.listdir(tmp_path / "cache")
    assert len(made) == 1 and made[0].startswith("corpus-")


@pytest.mark.parametrize("args, hint", [
    (["--config.optim.peak_lr=1"], "configs/tiny.py has no key --config.optim.peak_lr (did you "
                                   "mean optim.peak_learning_rate"),
    (["--config=configs/base.py", "--config.batch_sise=3"],
     "configs/base.py has no key --config.batch_sise (did you mean batch_size?)"),
])
def test_cli_names_an_unknown_config_key(args, hint):
    """A mistyped override is one line naming the flag and the nearest keys, not a traceback
    ending in ml_collections' "AttributeError: 'lr'"."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "robertax.train", *args], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert hint in done.stderr and "Traceback" not in done.stderr


def test_cli_shows_bad_input_as_one_line(tmp_path):
    """A run whose set-up finds bad input (here a corpus glob that matches nothing) ends with
    one line, "error: ...", and status 1; the library call raises the exception itself."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    corpus = str(tmp_path / "none" / "*.txt")
    args = [sys.executable, "-m", "robertax.train", f"--workdir={tmp_path / 'w'}",
            f"--config.data.corpus={corpus}"]
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and corpus in last
    env = {**os.environ, "ROBERTAX_TRACEBACK": "1"}
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" in done.stderr and "FileNotFoundError" in done.stderr
    c = tiny.get_config()
    c.data.corpus = corpus
    with pytest.raises(FileNotFoundError, match="matches no file"):
        train.train(c, str(tmp_path / "w2"))


def _out_of_memory(*_):
    """A computation XLA:CPU cannot allocate (a cumulative sum of 2**37 numbers, 1 TiB of
    buffers): its real RESOURCE_EXHAUSTED. (A sort of as many crashes jax 0.11.2's CPU compiler
    with a floating-point exception.)"""
    import jax
    import jax.numpy as jnp
    return jax.jit(lambda: jnp.cumsum(jnp.arange(2**37, dtype=jnp.float32))[:2])()


def test_out_of_memory_names_the_microbatch_to_change(tmp_path, monkeypatch, writer_closes):
    """A run that does not fit the device ends with a ValueError marked as bad input (one line
    from the CLI) that names each device's share and the settings to change. XLA:CPU's real
    error surfaces after the step is dispatched ("INTERNAL: ... Out of memory"), as a GPU's
    may; one raised at dispatch says RESOURCE_EXHAUSTED."""
    import dataclasses
    import jax
    from robertax import sharding
    real = train.build
    monkeypatch.setattr(train, "build", lambda c, mesh: dataclasses.replace(
        real(c, mesh), train_step=_out_of_memory))
    c = config(3)
    c.microbatches = 2
    with pytest.raises(ValueError) as e:
        train.train(c, str(tmp_path))
    assert writer_closes == [True]  # closed on the way out (conftest.writer_closes says why)
    msg = str(e.value)
    assert e.value.robertax_bad_input
    assert isinstance(e.value.__cause__, jax.errors.JaxRuntimeError)
    n = jax.device_count()  # the mesh's data axis takes them all (8 fake CPU devices here)
    assert msg.startswith(f"out of device memory. Each device holds {8 // n} sequence(s) of 128 "
                          f"tokens at a time (a microbatch of 8 over {n} data shard(s))"), msg
    assert "raise --config.microbatches (now 2; it must divide batch_size 16)" in msg
    assert "(--config.model.remat=dots or full; now 'none')" in msg
    assert "--config.mesh.fsdp" in msg
    assert re.search(r"Out of memory allocating \d+ bytes\.$", msg), msg
    # at dispatch; other errors and results pass through unchanged
    with pytest.raises(ValueError) as e:
        with sharding.memory_hint(c.mesh, 64, 4, 128, "full"):
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying "
                                             "to allocate 57.31GiB.\ndetails")
    assert f"holds {16 // n} sequence(s)" in str(e.value) and "remat" not in str(e.value)
    assert str(e.value).endswith("XLA: RESOURCE_EXHAUSTED: Out of memory while trying to "
                                 "allocate 57.31GiB.")
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL: something else"):
        with sharding.memory_hint(c.mesh, 16, 2, 128):
            raise jax.errors.JaxRuntimeError("INTERNAL: something else")
    with sharding.memory_hint(c.mesh, 16, 2, 128):
        assert jax.numpy.ones(2).sum() == 2
