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

import logging
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


def maybe_initialize_distributed() -> None:
    """Joins JAX's multi-host runtime when a launcher set it up (SLURM, TPU pods, or the
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables)."""
    launched = any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                                              "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))
    if launched and jax.process_count() == 1:
        try:
            jax.distributed.initialize()
        except RuntimeError as e:  # already initialized
            logging.info("jax.distributed.initialize: %s", e)


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


def host_batch_to_global(mesh: Mesh, batch: dict) -> dict:
    """This host's slice of the batch (numpy) -> global jax.Arrays sharded over the data axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
            for k, v in batch.items()}
