"""Checkpoints: a thin wrapper over Orbax's CheckpointManager.

A training checkpoint holds the train state and the Grain iterator state, so a resumed run
continues with exactly the batches (and masks) an uninterrupted run would have seen. Saves are
asynchronous; the last `keep` are kept.

The "robertax" model format (for `robertax.convert` and fine-tuning) is a directory with
`robertax_config.json` (the RobertaConfig) and `params/` (an Orbax PyTree checkpoint). A
training workdir is accepted wherever that format is read: its latest checkpoint's parameters
and the model section of its `config.json` are used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from robertax.model import RobertaConfig

CONFIG_FILE = "robertax_config.json"


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, except that it never asks JAX's preemption service itself. The training
    loop asks once per step (robertax.train); Orbax would also ask from the thread that
    finishes an asynchronous save, with that save's older step, and so tell the service a step
    this process has passed: the step the processes agree to stop at could then be one this
    process never reaches again. The loop saves with force=True: the answer decides nothing."""

    def reached_preemption(self, step: int) -> bool:
        return False


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, every: int = 1,
                 async_save: bool = True, with_data: bool = True):
        self.directory = os.path.abspath(directory)
        self.with_data = with_data
        items = ("state", "data") if with_data else ("state",)
        self.manager = _Manager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                                 enable_async_checkpointing=async_save),
            item_names=items)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
        import grain
        args = {"state": ocp.args.StandardSave(state)}
        if self.with_data:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """Restores onto the shardings in `abstract_state` (ShapeDtypeStructs); positions
        `data_iter` in place. Returns the state."""
        import grain
        step = self.latest_step() if step is None else step
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if self.with_data:
            self._check_processes(step)
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**args)).state

    def _check_processes(self, step: int) -> None:
        """Each process saved its own data position (data/process_I-of-N.json): a resumed run
        needs as many processes as the one that saved."""
        import glob
        data = os.path.join(self.directory, str(step), "data")
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        saved = sorted(glob.glob(os.path.join(glob.escape(data), "process_*-of-*.json")))
        if saved and not os.path.exists(os.path.join(data, mine)):
            counts = sorted({os.path.basename(f).rsplit("-of-", 1)[1][:-5] for f in saved})
            raise ValueError(
                f"{data}: the checkpoint of step {step} was saved by {' or '.join(counts)} "
                f"process(es) (each keeps its own data position there); this run has "
                f"{jax.process_count()}. Resume with {' or '.join(counts)} process(es).")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def config_to_json(config: RobertaConfig) -> dict:
    d = dataclasses.asdict(config)
    d["dtype"], d["param_dtype"] = str(jnp.dtype(config.dtype)), str(jnp.dtype(config.param_dtype))
    return d


def save_model(path: str, config: RobertaConfig, params, extra: dict | None = None) -> None:
    """Writes the robertax model format: robertax_config.json + params/. With several
    processes, every one calls it with the same (host) parameters; process 0 writes."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump({"model": config_to_json(config), **(extra or {})}, f, indent=2)
    params = jax.tree.map(np.asarray, params)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), params, force=True)


def is_model_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_FILE))


def is_train_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(
        os.path.join(path, "checkpoints"))


def is_finetune_dir(path: str) -> bool:
    """A fine-tuning run's workdir: its model is best/ (`model_dir`)."""
    return not is_model_dir(path) and is_model_dir(os.path.join(path, "best"))


def model_dir(path: str) -> str:
    """The model dir a path names: a fine-tuning workdir's best/, else the path itself."""
    return os.path.join(path, "best") if is_finetune_dir(path) else path


def load_model(path: str, **config_overrides) -> tuple[RobertaConfig, Any, dict]:
    """Reads the robertax model format (or a fine-tuning workdir's best/) or a pretraining
    workdir's latest checkpoint -> (config, params, extra)."""
    path = model_dir(os.path.abspath(path))
    if is_model_dir(path):
        with open(os.path.join(path, CONFIG_FILE)) as f:
            meta = json.load(f)
        config = RobertaConfig.from_dict(meta.pop("model"), **config_overrides)
        with ocp.PyTreeCheckpointer() as ckptr:
            params = ckptr.restore(os.path.join(path, "params"))
        return config, params, meta
    if is_train_dir(path):
        with open(os.path.join(path, "config.json")) as f:
            run_config = json.load(f)
        from robertax.train import model_config
        config = model_config(run_config, **config_overrides)
        manager = ocp.CheckpointManager(os.path.join(path, "checkpoints"),
                                        item_names=("state", "data"))
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{path}/checkpoints has no finished checkpoint")
        # Saved on other devices (e.g. 8 GPUs, read on 1 CPU): arrays whose stored sharding
        # does not exist here land on this host's first device.
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(fallback_sharding=here)))
        manager.close()
        return config, restored.state["params"], {"step": step, "run_config": run_config}
    raise FileNotFoundError(f"{path}: neither a robertax model ({CONFIG_FILE}) nor a training "
                            "workdir (config.json + checkpoints/)")
