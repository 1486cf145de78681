"""Several hosts, as two CPU processes with two devices each joined by jax.distributed (the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables, gloo collectives):
pretraining stops together when one host is preempted, resumes, and matches one process's run;
fine-tuning with parameters sharded across the hosts matches one process's run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from robertax import checkpoint, observe, sharding
from robertax.finetune import finetune
from robertax.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny model; no dropout, so that one process and two give the same numbers.
PRETRAIN = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
            "model.intermediate_size": 64, "model.dropout_rate": 0.0,
            "model.attention_dropout_rate": 0.0, "optim.total_steps": 1000,
            "optim.warmup_steps": 10, "batch_size": 8, "log_every": 1, "eval_every": 4,
            "eval_batches": 100, "checkpoint_every": 10**6}
# Evaluation reads the whole held-out split of the built-in corpus, 159 rows: hosts hold 80 and
# 79 of them, 20 and 19 batches of 4, and must stop together after 19.

# One process of a multi-process run: robertax.train.train(configs/tiny.py + overrides).
WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from configs import tiny
from robertax import train
from tests.test_multihost import apply
train.train(apply(tiny.get_config(), json.loads(sys.argv[2])), sys.argv[3],
            stop_at=int(sys.argv[4]) or None)
"""

# Runs `-m MODULE ARGS` or `-c CODE ARGS` as python would, printing every thread's Python stack
# if it is still running after argv[1] seconds (a hang's whereabouts, in the test's report).
WATCHDOG = """
import faulthandler, runpy, sys
faulthandler.dump_traceback_later(float(sys.argv[1]))
flag, what, *rest = sys.argv[2:]
if flag == "-m":
    sys.argv = [what, *rest]
    runpy.run_module(what, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(what, "<worker>", "exec"), {"__name__": "__main__"})
"""
STUCK_AFTER = 240  # seconds; _finish gives up at 300


def apply(config, overrides: dict):
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[last] = value
    return config


def _launch(args, logs, processes=2, devices=2):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(processes):
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
               "JAX_PLATFORMS": "cpu"}
        with open(f"{logs}.{i}", "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-c", WATCHDOG, str(STUCK_AFTER), *args],
                                          cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _finish(procs, logs, timeout=300):
    """Waits for all; their outputs. A process still running after `timeout` s fails the test,
    showing every process's output (with the stacks the watchdog printed at STUCK_AFTER s)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    stuck = [i for i, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    texts = [open(f"{logs}.{i}").read() for i in range(len(procs))]
    report = "\n".join(f"--- process {i} (exit {p.returncode}):\n{texts[i][-8000:]}"
                       for i, p in enumerate(procs))
    assert not stuck, f"process(es) {stuck} still running after {timeout} s:\n{report}"
    assert all(p.returncode == 0 for p in procs), report
    return texts


def _pretrain(workdir, logs, stop_at=0):
    return _launch(["-c", WORKER, REPO, json.dumps(PRETRAIN), str(workdir), str(stop_at)], logs)


def _preempt_host_1(work, logs):
    """Starts 2 processes, sends SIGTERM to process 1 once step 3 is logged; their outputs and
    the step of the checkpoint they left."""
    procs = _pretrain(work, logs)
    deadline = time.monotonic() + 240
    try:
        while _last_step(work) < 3:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                open(f"{logs}.0").read()[-3000:]
            time.sleep(0.2)
    except AssertionError:
        for p in procs:
            p.kill()
        raise
    procs[1].send_signal(signal.SIGTERM)
    out = _finish(procs, logs)
    return out, checkpoint.Checkpointer(str(work / "checkpoints")).latest_step()


def _losses(workdir, key="loss"):
    return {r["step"]: r[key] for r in observe.read_metrics(workdir) if key in r}


def _last_step(workdir) -> int:
    """The last step metrics.jsonl shows complete (process 0 may be writing a line)."""
    try:
        lines = open(workdir / "metrics.jsonl").read().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines[:-1]), default=0)


def test_launch_from_environment():
    launch = sharding._launch_from_env
    assert launch({}) is None
    assert launch({"JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0",
                   "JAX_COORDINATOR_ADDRESS": "h:1"}) is None
    slurm = {"SLURM_STEP_NODELIST": "n[1-4]", "SLURM_JOB_ID": "7"}
    assert launch({**slurm, "SLURM_NTASKS": "1"}) is None  # one task: nothing to join
    assert launch({"SLURM_NTASKS": "16"}) is None  # sbatch's own shell: one process
    assert launch({"JAX_NUM_PROCESSES": "1"}) is None
    assert launch({"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # a single-host TPU VM
    assert launch({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == (
        "Cloud TPU, TPU_WORKER_HOSTNAMES=10.0.0.2,10.0.0.3", {})
    assert launch({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
                   "JAX_COORDINATOR_ADDRESS": "h0:1234"}) == (
        "JAX_NUM_PROCESSES=4",
        {"num_processes": 4, "process_id": 3, "coordinator_address": "h0:1234"})
    assert launch({**slurm, "SLURM_NTASKS": "16"}) == ("SLURM (srun), SLURM_NTASKS=16", {})
    with pytest.raises(ValueError, match="JAX_PROCESS_ID is not"):
        launch({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROC"):
        launch({"JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS is not"):
        launch({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='x' is not an integer"):
        launch({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x", "JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=2 is not in \[0, JAX_NUM_PROCESSES=2\)"):
        launch({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "h:1"})


def test_two_hosts_preempted_resume_as_one_process(tmp_path):
    """SIGTERM to host 1 alone: both hosts save at the step JAX's preemption service picks and
    exit cleanly; resumed, the losses equal those of one uninterrupted process with 8 devices.
    (It hung in evaluation in 2 of 14 runs before the loops bounded their queue: see
    robertax.sharding.IN_FLIGHT. A hang fails with each process's Python stacks.)"""
    work, logs = tmp_path / "two", str(tmp_path / "log")
    out, stopped = _preempt_host_1(work, logs)
    assert 3 <= stopped < 1000
    assert "JAX_NUM_PROCESSES=2: 2 processes, 4 devices (2 on process 0)" in out[0]
    assert f"stopped at step {stopped} of 1000 (SIGTERM)" in out[0]

    out = _finish(_pretrain(work, logs, stop_at=stopped + 3), logs)
    assert f"resumed from step {stopped}" in out[0]
    assert "trained 3 steps" in out[0] and "trained" not in out[1]  # process 0 reports

    from configs import tiny
    alone = tmp_path / "one"
    train(apply(tiny.get_config(), PRETRAIN), str(alone), stop_at=stopped + 3)
    two, one = _losses(work), _losses(alone)
    assert sorted(two) == sorted(one) == list(range(1, stopped + 4))
    np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=1e-5)
    two, one = _losses(work, "eval_loss"), _losses(alone, "eval_loss")
    assert sorted(two) == sorted(one) == list(range(4, stopped + 4, 4))
    np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=1e-5)


def test_two_hosts_finetune_with_parameters_split_across_hosts(pretrained, test_data, tmp_path):
    """mesh fsdp=4 over 2 processes x 2 devices: each host holds half of each parameter. The
    best model (gathered for saving), dev predictions and scores equal one process's."""
    import jax
    from configs.finetune import sst2
    overrides = {"init_checkpoint": pretrained, "data_dir": str(test_data / "glue"),
                 "max_length": 64, "max_train_examples": 32, "max_eval_examples": 16,
                 "max_steps": 2, "batch_size": 8, "eval_batch_size": 16,
                 "precision": "float32", "progress": False, "mesh.data": -1, "mesh.fsdp": 4}
    two, one, logs = tmp_path / "two", tmp_path / "one", str(tmp_path / "log")
    out = _finish(_launch(["-m", "robertax.finetune", "--config=configs/finetune/sst2.py",
                           f"--workdir={two}",
                           *(f"--config.{k}={v}" for k, v in overrides.items())], logs), logs)
    assert "SST-2 (best of 1 evaluation(s), step 2)" in out[0] and "SST-2" not in out[1]
    finetune(apply(sst2.get_config(), overrides), str(one))

    r2, r1 = (json.load(open(d / "results.json")) for d in (two, one))
    assert r2["accuracy"] == r1["accuracy"] and r2["steps_run"] == 2
    assert (two / "dev_predictions.tsv").read_text() == (one / "dev_predictions.tsv").read_text()
    p2, p1 = (checkpoint.load_model(str(d / "best"))[1] for d in (two, one))
    for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_needs_as_many_processes_as_saved(tmp_path):
    """Each process saved its own data position; one process cannot take over two's."""
    data = tmp_path / "checkpoints" / "37" / "data"
    data.mkdir(parents=True)
    for i in range(2):
        (data / f"process_{i}-of-2.json").write_text('{"next_index": 37}')
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    with pytest.raises(ValueError, match=r"step 37 was saved by 2 process\(es\).*this run has 1\. "
                                         r"Resume with 2 process\(es\)"):
        ckpt._check_processes(37)
    (data / "process_0-of-1.json").write_text('{"next_index": 37}')
    ckpt._check_processes(37)  # this run's own file is there


def test_mesh_that_does_not_split_the_batch_between_hosts_is_refused(tmp_path):
    """Tensor parallelism over all 4 devices leaves the batch whole on both hosts, each of which
    reads only its half: refused at set-up rather than training on replicas that disagree."""
    logs = str(tmp_path / "log")
    procs = _launch(["-m", "robertax.train", f"--workdir={tmp_path / 'w'}",
                     "--config.mesh.data=1", "--config.mesh.tensor=4"], logs)
    for i, p in enumerate(procs):
        assert p.wait(timeout=120) == 1
        assert ("error: mesh {'data': 1, 'fsdp': 1, 'tensor': 4} on 2 processes: the batch is "
                "not split between the processes") in open(f"{logs}.{i}").read()


class _Step:
    """A stand-in for one dispatched step's outputs that records when it is waited on."""

    def __init__(self, waited: list, index: int):
        self.waited, self.index = waited, index

    def block_until_ready(self):
        self.waited.append(self.index)
        return self


def test_loops_keep_at_most_in_flight_steps_queued():
    """The bound that keeps a multi-process CPU run out of XLA's deadlock: after step n is
    dispatched, step n - IN_FLIGHT is waited for, and nothing is waited for before that."""
    waited, pending = [], []
    for n in range(3 * sharding.IN_FLIGHT):
        pending.append({"loss": _Step(waited, n)})
        sharding.wait_behind(pending)
        assert waited == list(range(max(0, n - sharding.IN_FLIGHT + 1)))
    # Evaluation queues 2 computations a batch (the batch's sums and their addition).
    assert 2 * sharding.IN_FLIGHT < 32  # XLA's CPU client's limit per device
