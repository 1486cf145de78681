"""A post-LayerNorm block's residual add, dropout and LayerNorm in one kernel
(`model.fused_norm`):

    y = LayerNorm(x + dropout(h + h_bias))      x, h [B, L, D]; h_bias [D]; the norm over D

(h_bias: the bias of the product that made h, added here rather than in a kernel of its own.)

XLA compiles this into three kernels a norm (the add, which also writes the dropout mask for the
backward; the row statistics; the normalization: about 650 MB moved at base's batch 128 × 512,
0.23 ms at the H100 roofline, 5.5 ms a base step), and its backward into two more. Here one
Pallas kernel (Triton on a GPU; Pallas's interpreter elsewhere, slow: for tests) reads x and h
once and writes y and the sum s = x + dropout(h), which the backward keeps instead of the mask
and the statistics; one backward kernel reads the incoming gradient and s, recomputes the
statistics and the mask, and writes the gradients of x and h and per-block partial sums of the
scale's and bias's gradients (added up by XLA: tiny).

The dropout mask is flax's `nn.Dropout` mask under the hash generator
(`config.dropout_rng="hash"`, `robertax.hash_rng`), recomputed from the key in both kernels:

    bits[i] = mix(mix(i ^ k0) ^ k1)      i = (row * L + position) * D + feature
    keep[i] = (bits[i] >> 9) < ceil(float32(1 - rate) * 2**23)

which is `jax.random.bernoulli(key, 1 - rate)` on those bits (a float32 uniform from the top 23
bits), so the fused and the plain model draw the same masks (tested). Kept values are divided by
1 - rate rounded to h's dtype, as `nn.Dropout`'s `h / keep_prob` does. The sum is computed in
float32 and rounded once to x's dtype; the statistics in float32 from the rounded sum (the
variance from centred values); the output rounded once to x's dtype.

Under a mesh each device runs the kernels on its batch rows (custom_partitioning; length and
features whole), hashing the global row indices it holds, so the masks do not depend on the mesh.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from robertax.hash_rng import hash_bits32, mix

Array = jax.Array

ROWS = 64  # rows (batch row, position) a program handles: a power of two dividing the length
SUB = 8  # rows a step of its loop holds in registers
NUM_WARPS = 4


def threshold(rate: float) -> int:
    """keep where (bits >> 9) is below this: the 23-bit m with m / 2**23 < float32(1 - rate)."""
    return math.ceil(Fraction(float(np.float32(1.0 - rate))) * 2 ** 23)


def _kept(bits: Array, rate: float) -> Array:
    return (bits >> 9) < np.uint32(threshold(rate))


def keep_mask(key: Array, shape: tuple[int, int, int], rate: float) -> Array:
    """The whole [B, L, D] keep mask the kernels apply (for tests): hash_rng's bits, the ones
    nn.Dropout's bernoulli draws from under a "hash" key with these words."""
    return _kept(hash_bits32(key[0], key[1], shape, split_leading=False), rate)


def _chunk(D: int) -> int:
    """The widest power of two dividing D (Triton's loads and stores are powers of two)."""
    return D & -D


def _rows(L: int) -> int:
    """Rows a program handles: the widest power of two dividing L, at most ROWS."""
    return min(ROWS, L & -L)


def _keep_prob(rate: float, dtype) -> float:
    """1 - rate as `nn.Dropout` divides by it: rounded to the dropped array's dtype."""
    return float(np.asarray(1.0 - rate).astype(dtype)) if rate else 1.0


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def _params():
    if _interpret():
        return None
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=1)


def _layout(ids_ref, ref, L: int):
    """A program's rows a loop step, its column chunks, and the global (batch row, position)
    index of its first row (uint32; read at the kernel's top level: Pallas's interpreter has
    program ids only there)."""
    rows, D = ref.shape
    chunk = _chunk(D)
    first = ids_ref[2] + (pl.program_id(0) * L + pl.program_id(1) * rows).astype(jnp.uint32)
    return min(SUB, rows), [pl.ds(c * chunk, chunk) for c in range(D // chunk)], first


def _keep(ids_ref, first, step, sub: int, col, D: int, rate: float) -> Array:
    """The keep mask of loop step `step`'s rows and the columns `col` (a pl.ds)."""
    rows = first + (step * sub).astype(jnp.uint32) + lax.broadcasted_iota(jnp.uint32, (sub, 1), 0)
    cols = lax.broadcasted_iota(jnp.uint32, (1, col.size), 1) + np.uint32(col.start)
    return _kept(mix(mix((rows * np.uint32(D) + cols) ^ ids_ref[0]) ^ ids_ref[1]), rate)


def _stats(parts: list, D: int, eps: float) -> tuple[Array, Array]:
    mean = sum(jnp.sum(t, axis=1) for t in parts) / D
    var = sum(jnp.sum(jnp.square(t - mean[:, None]), axis=1) for t in parts) / D
    return mean[:, None], lax.rsqrt(var + eps)[:, None]


def _fwd_kernel(ids_ref, x_ref, h_ref, hbias_ref, scale_ref, bias_ref, y_ref, s_ref, *, L, rate,
                eps):
    rows, D = x_ref.shape
    sub, cols, first = _layout(ids_ref, x_ref, L)
    keep_prob = _keep_prob(rate, h_ref.dtype)

    def body(i, carry):
        r = pl.ds(pl.multiple_of(i * sub, sub), sub)
        parts = []
        for col in cols:
            # h + h_bias rounded as the plain model's product + bias is (both in h's dtype)
            hb = hbias_ref[col].astype(h_ref.dtype).astype(jnp.float32)[None, :]
            h = (h_ref[r, col].astype(jnp.float32) + hb).astype(h_ref.dtype).astype(jnp.float32)
            if rate:
                h = jnp.where(_keep(ids_ref, first, i, sub, col, D, rate), h / keep_prob, 0.0)
            s = (x_ref[r, col].astype(jnp.float32) + h).astype(s_ref.dtype)
            s_ref[r, col] = s
            parts.append(s.astype(jnp.float32))
        mean, rstd = _stats(parts, D, eps)
        for t, col in zip(parts, cols):
            y = (t - mean) * rstd * scale_ref[col].astype(jnp.float32)[None, :]
            y_ref[r, col] = (y + bias_ref[col].astype(jnp.float32)[None, :]).astype(y_ref.dtype)
        return carry

    lax.fori_loop(0, rows // sub, body, 0)


def _bwd_kernel(ids_ref, g_ref, s_ref, scale_ref, dx_ref, *refs, L, rate, eps):
    dh_ref, dscale_ref, dbias_ref, dhbias_ref = refs if rate else (None, *refs)
    rows, D = s_ref.shape
    sub, cols, first = _layout(ids_ref, s_ref, L)
    keep_prob = _keep_prob(rate, dx_ref.dtype)

    def body(i, carry):
        r = pl.ds(pl.multiple_of(i * sub, sub), sub)
        s = [s_ref[r, col].astype(jnp.float32) for col in cols]
        mean, rstd = _stats(s, D, eps)
        xhat = [(t - mean) * rstd for t in s]
        g = [g_ref[r, col].astype(jnp.float32) for col in cols]
        gs = [t * scale_ref[col].astype(jnp.float32)[None, :] for t, col in zip(g, cols)]
        m1 = sum(jnp.sum(t, axis=1) for t in gs)[:, None] / D
        m2 = sum(jnp.sum(a * b, axis=1) for a, b in zip(gs, xhat))[:, None] / D
        out = []
        for c, col in enumerate(cols):
            ds = rstd * (gs[c] - m1 - xhat[c] * m2)
            dx_ref[r, col] = ds.astype(dx_ref.dtype)
            dh = ds
            if rate:
                dh = jnp.where(_keep(ids_ref, first, i, sub, col, D, rate), ds / keep_prob, 0.0)
                dh_ref[r, col] = dh.astype(dh_ref.dtype)
            out.append((carry[0][c] + jnp.sum(g[c] * xhat[c], axis=0),
                        carry[1][c] + jnp.sum(g[c], axis=0), carry[2][c] + jnp.sum(dh, axis=0)))
        return tuple(tuple(o[k] for o in out) for k in range(3))

    zeros = tuple(jnp.zeros((col.size,), jnp.float32) for col in cols)
    sums = lax.fori_loop(0, rows // sub, body, (zeros, zeros, zeros))
    for ref, parts in zip((dscale_ref, dbias_ref, dhbias_ref), sums):
        for c, col in enumerate(cols):
            ref[col] = parts[c]


def _specs(D: int, rows: int):
    grid = lambda b, j: (b, j, 0)  # noqa: E731
    return (pl.BlockSpec((4,), lambda b, j: (0,)), pl.BlockSpec((None, rows, D), grid),
            pl.BlockSpec((D,), lambda b, j: (0,)), pl.BlockSpec((None, None, D), grid))


def _check(x: Array, h: Array, rate: float) -> None:
    if x.shape != h.shape or x.ndim != 3 or x.dtype != h.dtype:
        raise ValueError(f"fused_norm: x and h must be [B, L, D] of one dtype; got "
                         f"{x.dtype}{list(x.shape)} and {h.dtype}{list(h.shape)}")
    if x.size >= 2 ** 32:
        raise ValueError(f"fused_norm: {x.size} elements, more than the hash's 2**32 indices")
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")


def _forward_local(ids, x, h, h_bias, scale, bias, rate, eps):
    B, L, D = x.shape
    rows = _rows(L)
    ids_s, x_s, vec_s, _ = _specs(D, rows)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, L=L, rate=rate, eps=eps), grid=(B, L // rows),
        in_specs=[ids_s, x_s, x_s, vec_s, vec_s, vec_s], out_specs=[x_s, x_s],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype)] * 2,
        compiler_params=_params(), interpret=_interpret(),
        name="fused_norm_fwd" + ("_dropout" if rate else ""),
    )(ids, x, h, h_bias, scale, bias)


def _backward_local(ids, g, s, scale, rate, eps):
    B, L, D = s.shape
    rows = _rows(L)
    ids_s, x_s, vec_s, part_s = _specs(D, rows)
    part = jax.ShapeDtypeStruct((B, L // rows, D), jnp.float32)
    grads = [jax.ShapeDtypeStruct(s.shape, s.dtype)] * (2 if rate else 1)
    out = pl.pallas_call(
        functools.partial(_bwd_kernel, L=L, rate=rate, eps=eps), grid=(B, L // rows),
        in_specs=[ids_s, x_s, x_s, vec_s], out_specs=[x_s] * len(grads) + [part_s] * 3,
        out_shape=grads + [part] * 3, compiler_params=_params(), interpret=_interpret(),
        name="fused_norm_bwd" + ("_dropout" if rate else ""),
    )(ids, g, s, scale)
    return (out[0], out[0], *out[1:]) if not rate else tuple(out)


# ---------------------------------------------------------------------------------------------
# Under a mesh: each device runs the kernels on its batch rows; `rows` (an arange sharded with
# the batch) tells each shard the global index of its first row.

def _ids(key, rows, L):
    return jnp.concatenate([key.astype(jnp.uint32), (rows[:1] * np.uint32(L)).astype(jnp.uint32),
                            jnp.zeros((1,), jnp.uint32)])  # four words: a power of two


def _shardings(mesh, arg_shapes, kinds):
    batch = (tuple(arg_shapes[2].sharding.spec) + (None,))[0]  # x's ([B, L, D]) batch axis
    named = {"key": P(None), "rows": P(batch), "x": P(batch, None, None), "vec": P(None)}
    return tuple(NamedSharding(mesh, named[kind]) for kind in kinds)


def _partitioned(local, args: tuple[str, ...], outs: tuple[str, ...], rule: str):
    fn = custom_partitioning(local, static_argnums=(len(args), len(args) + 1))

    def partition(rate, eps, mesh, arg_shapes, result_shape):
        return (mesh, functools.partial(local, rate=rate, eps=eps),
                _shardings(mesh, arg_shapes, outs), _shardings(mesh, arg_shapes, args))

    def infer(rate, eps, mesh, arg_shapes, result_shape):
        return _shardings(mesh, arg_shapes, outs)

    fn.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule)
    return fn


def _forward_shard(key, rows, x, h, h_bias, scale, bias, rate, eps):
    return tuple(_forward_local(_ids(key, rows, x.shape[1]), x, h, h_bias, scale, bias, rate,
                                eps))


def _backward_shard(key, rows, g, s, scale, rate, eps):
    return _backward_local(_ids(key, rows, s.shape[1]), g, s, scale, rate, eps)


_forward = _partitioned(_forward_shard, ("key", "rows", "x", "x", "vec", "vec", "vec"),
                        ("x", "x"), "k, b, b l d, b l d, d, d, d -> b l d, b l d")
_backward = _partitioned(_backward_shard, ("key", "rows", "x", "x", "vec"),
                         ("x", "x", "x", "x", "x"),
                         "k, b, b l d, b l d, d -> b l d, b l d, b j d, b j d, b j d")


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _fused(key, x, h, h_bias, scale, bias, rate, eps):
    return _run_forward(key, x, h, h_bias, scale, bias, rate, eps)[0]


def _run_forward(key, x, h, h_bias, scale, bias, rate, eps):
    rows = jnp.arange(x.shape[0], dtype=jnp.uint32)
    y, s = _forward(key, rows, x, h, h_bias, scale, bias, rate, eps)
    return y, (key, rows, s, h_bias, scale, bias)


def _fused_bwd(rate, eps, res, g):
    key, rows, s, h_bias, scale, bias = res
    dx, dh, dscale, dbias, dhbias = _backward(key, rows, g.astype(s.dtype), s, scale, rate, eps)
    return (None, dx, dh, dhbias.sum((0, 1)).astype(h_bias.dtype),
            dscale.sum((0, 1)).astype(scale.dtype), dbias.sum((0, 1)).astype(bias.dtype))


_fused.defvjp(_run_forward, _fused_bwd)


def residual_norm(x: Array, h: Array, scale: Array, bias: Array, key: Array | None,
                  rate: float, eps: float, h_bias: Array | None = None) -> Array:
    """LayerNorm(x + dropout(h + h_bias)) over the last axis, with scale, bias and h_bias [D]
    (h_bias None: zero); `key` the dropout's uint32[2] hash key words (`jax.random.key_data`
    of a "hash" key), None with rate 0. Returns x's shape and dtype."""
    _check(x, h, rate)
    if rate and key is None:
        raise ValueError("fused_norm: dropout needs a key")
    key = jnp.zeros((2,), jnp.uint32) if key is None else jnp.asarray(key, jnp.uint32).reshape(2)
    h_bias = jnp.zeros(x.shape[-1:], scale.dtype) if h_bias is None else h_bias
    return _fused(key, x, h, h_bias, scale, bias, float(rate), float(eps))


def reference(x: Array, h: Array, scale: Array, bias: Array, key: Array | None, rate: float,
              eps: float, h_bias: Array | None = None) -> Array:
    """The same computation, mask and all, in plain XLA operations (for tests)."""
    hf = h.astype(jnp.float32)
    if h_bias is not None:
        hf = (hf + h_bias.astype(h.dtype).astype(jnp.float32)).astype(h.dtype).astype(jnp.float32)
    if rate:
        keep_prob = _keep_prob(rate, h.dtype)
        hf = jnp.where(keep_mask(jnp.asarray(key, jnp.uint32), x.shape, rate), hf / keep_prob,
                       0.0)
    s = (x.astype(jnp.float32) + hf).astype(x.dtype).astype(jnp.float32)
    mean = s.mean(-1, keepdims=True)
    rstd = lax.rsqrt(jnp.square(s - mean).mean(-1, keepdims=True) + eps)
    return ((s - mean) * rstd * scale.astype(jnp.float32)
            + bias.astype(jnp.float32)).astype(x.dtype)
