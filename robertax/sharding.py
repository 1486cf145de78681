"""Where arrays live: the device mesh and the one table of logical-axis rules.

Model code names logical axes only (see `robertax.model`); this file maps them to a mesh with
axes (data, fsdp, tensor):
  data    pure data parallelism: parameters replicated, the batch split
  fsdp    the batch split *and* parameters/optimizer state sharded (ZeRO-3 style)
  tensor  Megatron-style tensor parallelism over heads, the FFN and the vocabulary
The same code runs on 1 CPU, 8 fake CPU devices, GPUs and TPU pods. Multi-host: call
`maybe_initialize_distributed()` first; each host then feeds its own slice of the batch.
"""

from __future__ import annotations

import contextlib
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# logical axis -> mesh axis (or None: replicated). The whole sharding strategy is this table.
RULES = (
    ("batch", BATCH),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
)


# Launchers JAX detects by itself (jax.distributed.initialize() with no arguments): the
# variable that tells this process was started by one, and the one that holds how many
# processes it started (a list of hosts for Cloud TPU). `sbatch` alone sets SLURM_NTASKS for the
# allocation but runs one process; `srun` sets SLURM_STEP_NODELIST for the processes it starts.
_AUTO_LAUNCHERS = (("SLURM (srun)", "SLURM_STEP_NODELIST", "SLURM_NTASKS"),
                   ("Open MPI (mpirun)", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"),
                   ("Cloud TPU", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_HOSTNAMES"),
                   ("multi-slice TPU", "MEGASCALE_COORDINATOR_ADDRESS", None))


def _launched_processes(value: str) -> int:
    """How many processes a launcher's count variable says: a number, or a list of hosts."""
    value = value.strip()
    return int(value) if value.isdigit() else len([h for h in value.split(",") if h.strip()])


def _launch_from_env(env) -> tuple[str, dict] | None:
    """(what launched this process, jax.distributed.initialize kwargs), or None when this is
    one process on its own."""
    if "JAX_NUM_PROCESSES" in env:
        if env["JAX_NUM_PROCESSES"].strip() == "1":
            return None
        kwargs = {}
        for var, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
            try:
                kwargs[key] = int(env[var])
            except KeyError:
                raise ValueError("JAX_NUM_PROCESSES is set but JAX_PROCESS_ID is not: set it to "
                                 "this process's rank (0 on the coordinator)") from None
            except ValueError:
                raise ValueError(f"{var}={env[var]!r} is not an integer") from None
        if "JAX_COORDINATOR_ADDRESS" not in env:
            raise ValueError("JAX_NUM_PROCESSES is set but JAX_COORDINATOR_ADDRESS is not: set "
                             "it to host:port of process 0")
        if not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
            raise ValueError(f"JAX_PROCESS_ID={kwargs['process_id']} is not in "
                             f"[0, JAX_NUM_PROCESSES={kwargs['num_processes']})")
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        return f"JAX_NUM_PROCESSES={kwargs['num_processes']}", kwargs
    for name, marker, count in _AUTO_LAUNCHERS:
        if marker in env and (count is None or _launched_processes(env.get(count, "")) > 1):
            return f"{name}, {count or marker}={env.get(count or marker)}", {}
    if "JAX_COORDINATOR_ADDRESS" in env:
        raise ValueError("JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES is not: set it "
                         "to the number of processes, and JAX_PROCESS_ID to this one's rank")
    return None


def maybe_initialize_distributed() -> None:
    """Joins JAX's multi-host runtime when this process is one of several; a no-op otherwise.

    Each process is told its place either by JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (as torchrun's MASTER_ADDR, WORLD_SIZE, RANK), or by
    a launcher JAX recognizes itself: SLURM (srun), Open MPI (mpirun), Cloud TPU pods. Under
    srun and mpirun JAX gives each process one GPU, its local rank: start one task per GPU.
    It must run before anything starts JAX's devices (jax.devices(), an array, a computation);
    robertax's entry points call it first. Each process then feeds its own slice of every batch.
    """
    if jax.distributed.is_initialized():
        return
    launch = _launch_from_env(os.environ)
    if launch is None:
        return
    what, kwargs = launch
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        if "must be called before" not in str(e):  # e.g. the coordinator cannot be reached
            where = kwargs.get("coordinator_address", "the launcher's coordinator")
            raise RuntimeError(f"{what}: could not join the other processes through {where}: "
                               f"{e}") from e
        raise RuntimeError(
            f"{what}: this process is one of several, but JAX had already started its devices "
            "before robertax could join the others (jax.distributed.initialize must come first). "
            "Call robertax.sharding.maybe_initialize_distributed() or "
            f"jax.distributed.initialize() before any other JAX call. ({e})") from e
    if jax.process_index() == 0:
        print(f"{what}: {jax.process_count()} processes, {jax.device_count()} devices "
              f"({jax.local_device_count()} on process 0)", flush=True)


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 (all remaining devices)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(mesh_config.data), int(mesh_config.fsdp), int(mesh_config.tensor)]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {len(devices)} devices are "
                             f"not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
                         f"devices, have {len(devices)}")
    # Classic automatic (GSPMD) sharding: Mesh(...) defaults to AxisType.Auto.
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_shardings(mesh: Mesh, boxed_tree):
    """NamedShardings for a tree of nn.LogicallyPartitioned leaves (from `jax.eval_shape(init)`)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
    return {k: batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


def check_batch_divisible(mesh: Mesh, batch_size: int, microbatches: int) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % microbatches:
        raise ValueError(f"batch_size {batch_size} is not divisible by microbatches {microbatches}")
    if (batch_size // microbatches) % shards:
        raise ValueError(f"microbatch size {batch_size // microbatches} is not divisible by the "
                         f"{shards} data-parallel shards (mesh data x fsdp)")
    # Each process feeds its own contiguous 1/n of every batch (host_batch_to_global): its
    # devices must hold exactly those rows, or replicas would silently differ between hosts.
    n, i = jax.process_count(), jax.process_index()
    if n > 1:
        size = batch_size // microbatches
        held = {r for index in batch_sharding(mesh, 1).addressable_devices_indices_map(
            (size,)).values() for r in range(*index[0].indices(size))}
        if held != set(range(size * i // n, size * (i + 1) // n)):
            raise ValueError(
                f"mesh {dict(mesh.shape)} on {n} processes: the batch is not split between the "
                f"processes (each reads its own 1/{n} of it), so their data would disagree. "
                f"Make mesh.data x mesh.fsdp a multiple of {n}, e.g. mesh.tensor within a host "
                f"(at most {jax.local_device_count()}).")


@contextlib.contextmanager
def memory_hint(mesh_config, batch_size: int, microbatches: int, length: int,
                remat: str | None = None):
    """Inside, XLA's out-of-memory error (RESOURCE_EXHAUSTED when a computation is launched,
    "Out of memory" when it surfaces later) becomes a ValueError marked as bad input, naming
    each device's share of a microbatch and the settings that shrink it; other errors pass
    unchanged."""
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
            raise
        mesh = make_mesh(mesh_config)
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        micro = batch_size // microbatches
        ways = f"raise --config.microbatches (now {microbatches}; it must divide batch_size " \
               f"{batch_size})"
        if remat is not None and remat != "full":
            ways += (", recompute activations (--config.model.remat="
                     + ("dots or full" if remat == "none" else "full") + f"; now {remat!r})")
        err = ValueError(
            f"out of device memory. Each device holds {micro // shards} sequence(s) of {length} "
            f"tokens at a time (a microbatch of {micro} over {shards} data shard(s)) beside its "
            f"share of the parameters and optimizer state. To fit, {ways}, or shard the state "
            f"over more devices (--config.mesh.fsdp). XLA: {text.splitlines()[0]}")
        err.robertax_bad_input = True
        raise err from e


def host_batch_to_global(mesh: Mesh, batch: dict) -> dict:
    """This host's slice of the batch (numpy) -> global jax.Arrays sharded over the data axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
            for k, v in batch.items()}


def to_host(tree):
    """A tree of jax.Arrays as numpy on every process, gathering the pieces other hosts hold
    (parameters sharded with fsdp/tensor across hosts). Every process must call it."""
    if jax.process_count() == 1:
        return jax.device_get(tree)  # one batched transfer

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(one, tree)


def first_process_first(fn, name: str, timeout_s: int = 7 * 24 * 3600):
    """fn() on process 0, then, once it is done, on the others: work that fills a shared cache
    (tokenizing a corpus, possibly for hours) is done once, and on hosts without a shared disk
    by each. Every process must call it with the same `name`. The others wait on a key of the
    coordination service (no device collective, so no collective timeout); if fn fails on
    process 0, they raise too, naming its error."""
    if jax.process_count() == 1:
        return fn()
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    client = ocp.multihost.get_jax_distributed_client()
    key = f"robertax/{name}"
    if jax.process_index() == 0:
        try:
            out = fn()
        except Exception as e:
            client.key_value_set(key, f"failed: {type(e).__name__}: {e}")
            raise
        client.key_value_set(key, "done")
        return out
    status = client.blocking_key_value_get(key, timeout_s * 1000)
    if status != "done":
        raise RuntimeError(f"process 0 {status} (while it was first to {name})")
    return fn()


def from_all_processes(counts) -> np.ndarray:
    """Host-side integer counts from every process, stacked: [process_count, *shape], int64.
    Every process must call it. (They travel as two int32 halves: without jax_enable_x64 an
    int64 array on a device is int32, and token counts pass 2**31.)"""
    counts = np.asarray(counts, np.int64)
    if jax.process_count() == 1:
        return counts[None]
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    high, low = np.divmod(counts, 1 << 30)
    both = np.asarray(multihost_utils.process_allgather(np.stack([high, low]).astype(np.int32)))
    return both[:, 0].astype(np.int64) * (1 << 30) + both[:, 1]


# At most this many steps (or evaluation batches) are dispatched ahead of the devices. XLA's CPU
# client (jax 0.10.2) deadlocks a multi-process run when more than 32 computations per device
# are queued: a queued collective's launch waits on that limit while holding one of the client's
# few threads (2 on a 2-core machine), and the other processes wait in gloo for it. Found with
# gdb in tests/test_multihost.py's evaluation hang (2026-12-06). Costs a GPU nothing.
IN_FLIGHT = 8


def wait_behind(outputs: list) -> None:
    """Call after appending each step's outputs: blocks until those dispatched IN_FLIGHT steps
    before the newest are ready, so that no more than IN_FLIGHT steps are queued."""
    if len(outputs) > IN_FLIGHT:
        jax.block_until_ready(outputs[-IN_FLIGHT - 1])
