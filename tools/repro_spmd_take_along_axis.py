"""Minimal reproducer of an XLA SPMD mis-partitioning (jax 0.10.2, CPU, 8 fake devices).

The gradient of an MLM-style loss that picks target log-probs with `take_along_axis` from
vocab-sharded logits is wrong when the mesh's data, fsdp and tensor axes are all > 1; the one-hot
form is right. robertax.step uses the one-hot form for this reason. Prints the relative error of
each gradient against the unsharded computation for both forms.

    python tools/repro_spmd_take_along_axis.py
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
V, D, B, L, Pm = 256, 32, 8, 32, 6
rng = np.random.default_rng(0)
params = {"tok": jnp.asarray(rng.normal(size=(V, D)), jnp.float32),
          "w": jnp.asarray(rng.normal(size=(D, D)) / 6, jnp.float32)}
ids = jnp.asarray(rng.integers(0, V, size=(B, L)), jnp.int32)
pos = jnp.asarray(np.stack([rng.choice(L, Pm, replace=False) for _ in range(B)]), jnp.int32)
tgt = jnp.asarray(rng.integers(0, V, size=(B, Pm)), jnp.int32)


def loss(p, ids, pos, tgt, onehot):
    x = jnp.take(p["tok"], ids, axis=0)                          # embed   [B, L, D]
    h = jnp.take_along_axis(x, pos[..., None], axis=1) @ p["w"]  # masked  [B, P, D]
    logp = jax.nn.log_softmax(h @ p["tok"].T)                    # tied    [B, P, V]
    if onehot:
        return -(logp * jax.nn.one_hot(tgt, V)).sum(-1).mean()
    return -jnp.take_along_axis(logp, tgt[..., None], axis=-1).mean()


psh = {"tok": NamedSharding(mesh, P("tensor", "fsdp")), "w": NamedSharding(mesh, P("fsdp", "tensor"))}
bsh = NamedSharding(mesh, P(("data", "fsdp"), None))
for onehot in (False, True):
    ref = jax.jit(jax.grad(loss), static_argnums=4)(params, ids, pos, tgt, onehot)
    got = jax.jit(jax.grad(loss), static_argnums=4, in_shardings=(psh, bsh, bsh, bsh))(
        params, ids, pos, tgt, onehot)
    err = {k: float(jnp.abs(got[k] - ref[k]).max() / jnp.abs(ref[k]).max()) for k in got}
    print("one-hot        " if onehot else "take_along_axis", err)
