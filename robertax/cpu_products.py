"""Matrix products as XLA:CPU runs them fast (jax 0.10.2): the model's CPU paths.

- `dense_bf16`: a dense layer in bf16. XLA:CPU runs bf16 x bf16 -> bf16 products converted to
  float32, but bf16 x bf16 -> float32 natively (AMX); see `tools/bench_model.py --gemms`.
- `tied_logits`: the MLM head's tied vocabulary projection, float32 or bf16, with a backward
  that avoids XLA:CPU's slow transposed copies and column reductions.

Same math as the plain jnp expressions (tests/test_model.py checks them against float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def dense_bf16(x: Array, w: Array, b: Array) -> Array:
    """x [M, K] @ w [K, N] + b [N] in bf16 on CPU: accumulated in float32 and rounded once, and
    so are the products of its backward, whose bias gradient is a float32 sum.

    XLA:CPU (jax 0.10.2) runs a bf16 x bf16 -> bf16 product by converting both operands to
    float32 (about 230 GFLOP/s on this project's 2-core Xeon), and bf16 x bf16 -> float32
    natively (AMX, 500-1,200); autodiff's backward would take a float32 cotangent (the slow
    path again), and reduces bf16 bias gradients with slow reduce-windows."""
    f32 = jnp.float32
    return (jnp.matmul(x, w, preferred_element_type=f32) + b.astype(f32)).astype(x.dtype)


def _dense_bf16_fwd(x, w, b):
    return dense_bf16(x, w, b), (x, w)


def _dense_bf16_bwd(res, g):
    x, w = res
    f32, g = jnp.float32, g.astype(x.dtype)
    dx = jnp.matmul(g, transposed_copy(w), preferred_element_type=f32).astype(x.dtype)
    dw = jnp.matmul(transposed_copy(x), g, preferred_element_type=f32).astype(w.dtype)
    return dx, dw, jnp.sum(g, axis=0, dtype=f32).astype(w.dtype)  # b has w's (promoted) dtype


dense_bf16.defvjp(_dense_bf16_fwd, _dense_bf16_bwd)


def transposed_copy(a: Array) -> Array:
    """a [M, K] -> a.T [K, M], materialized. XLA folds a plain `a.T` into the product, and most
    bf16 products with a transposed operand then run converted to float32 (about 200 GFLOP/s
    on XLA:CPU, jax 0.10.2; `tools/bench_model.py --gemms`). Through a 3-D transpose it stays
    a copy, and the product runs natively (500-1,000 GFLOP/s)."""
    return jnp.transpose(a[..., None], (1, 0, 2)).reshape(a.shape[1], a.shape[0])


@jax.custom_vjp
def tied_logits(h: Array, table: Array, bias: Array) -> Array:
    """h [..., D] @ table [V, D].T + bias [V] -> [..., V], with a hand-written backward.

    Used on CPU: autodiff's backward transposes the [T, V] logit gradient (a copy the size of
    the logits) for table.T-shaped products and sums it over T with a column reduction that
    XLA:CPU's YNNPACK path runs very slowly for V ~ 50K (jax 0.10.2). Same math, same forward.
    """
    f32 = jnp.float32  # accumulate in float32 (in bf16, XLA:CPU's fast path)
    if h.dtype == jnp.bfloat16:  # see transposed_copy
        logits = jnp.matmul(h, transposed_copy(table), preferred_element_type=f32)
    else:
        logits = jnp.einsum("...D,VD->...V", h, table, preferred_element_type=f32)
    return logits.astype(h.dtype) + bias


def _tied_logits_fwd(h, table, bias):
    return tied_logits(h, table, bias), (h, table)


def _tied_logits_bwd(res, g):
    h, table = res
    (V, D), T = table.shape, g.size // table.shape[0]
    g2, h2 = g.reshape(T, V), h.reshape(T, D)
    f32 = jnp.float32
    dh = jnp.einsum("TV,VD->TD", g2, table, preferred_element_type=f32).astype(h.dtype)
    dh = dh.reshape(h.shape)
    if g2.dtype == jnp.bfloat16:  # see transposed_copy
        dtable = jnp.matmul(transposed_copy(g2), h2, preferred_element_type=f32)
    else:  # contracts T in place: no transposed copy of g (float32 runs fast this way)
        dtable = jnp.einsum("TV,TD->VD", g2, h2, preferred_element_type=f32)
    dtable = dtable.astype(table.dtype)
    dbias = jnp.einsum("T,TV->V", jnp.ones((T,), g.dtype), g2,  # a dot, not a column reduce
                       preferred_element_type=jnp.float32).astype(g.dtype)
    return dh, dtable, dbias


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)
