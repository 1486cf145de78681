"""Matrix products as the CPU runs them fast: the model's CPU paths.

Two routes (`model.cpu_matmul`):
- "xla" (default): XLA:CPU's own products (jax 0.10.2). It runs bf16 x bf16 -> bf16 products
  converted to float32, but bf16 x bf16 -> float32 natively, and bf16 products with a
  transposed operand slowly (the first operand transposed everywhere measured, the second on
  CPUs with AMX: `bf16_transposed_b_native`); so bf16 products here accumulate in float32 and
  those transposed operands are materialized (`transposed_copy`).
- "mkl": Intel MKL through a custom call (`robertax/mkl_gemm.py`), float32 and bf16
  (float32 accumulation), every transposed form native.

`dense` is a dense layer (float32 or bf16, on both routes); `tied_logits` the MLM
head's tied vocabulary projection, with a backward that avoids XLA:CPU's slow transposed copies
and column reductions. Same math as the plain jnp expressions (tests/test_model.py checks them
against float32 and autodiff). See `tools/bench_model.py --gemms` for the speeds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from robertax import mkl_gemm

Array = jax.Array


def product(a: Array, b: Array, trans_a: bool = False, trans_b: bool = False,
            mkl: bool = False) -> Array:
    """op(a) @ op(b) for 2-D a, b of one dtype, accumulated and returned in float32; op
    transposes when asked."""
    if mkl:
        return mkl_gemm.gemm(a, b, trans_a, trans_b)
    if a.dtype == jnp.bfloat16:  # see transposed_copy and bf16_transposed_b_native
        if trans_a:
            a, trans_a = transposed_copy(a), False
        if trans_b and not bf16_transposed_b_native():
            b, trans_b = transposed_copy(b), False
    # float32 (and bf16's second operand where native): contracted in place, without a copy
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def dense(x: Array, w: Array, b: Array, mkl: bool = False) -> Array:
    """x [M, K] @ w [K, N] + b [N] in x's dtype, accumulated in float32 and rounded once; so
    are the products of its backward, whose bias gradient is a float32 sum.

    w and b may be stored in another dtype (float32 parameters for a bf16 x): they are rounded
    to x's dtype for the products, and their gradients come back in their own dtype, rounded
    once from the float32 accumulation (a bf16 rounding in between would cost a pass over
    each weight, and precision).

    In bf16 on "xla", autodiff's backward would take a bf16 x bf16 -> bf16 product (converted
    to float32, about 230 GFLOP/s on this project's 2-core Xeon, against 500-1,200 natively)
    and reduce bf16 bias gradients with slow reduce-windows."""
    return _dense(x, w, b, mkl, w.dtype, b.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _dense(x, w, b, mkl, w_dtype, b_dtype):
    f32 = jnp.float32
    return (product(x, w.astype(x.dtype), mkl=mkl) + b.astype(f32)).astype(x.dtype)


def _dense_fwd(x, w, b, mkl, w_dtype, b_dtype):
    w = w.astype(x.dtype)
    return _dense(x, w, b, mkl, w_dtype, b_dtype), (x, w)


def _dense_bwd(mkl, w_dtype, b_dtype, res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = product(g, w, trans_b=True, mkl=mkl).astype(x.dtype)
    dw = product(x, g, trans_a=True, mkl=mkl).astype(w_dtype)
    return dx, dw, jnp.sum(g, axis=0, dtype=jnp.float32).astype(b_dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


@functools.cache
def bf16_transposed_b_native() -> bool:
    """Whether XLA:CPU runs a bf16 product with its second operand stored transposed ([N, K])
    at full speed here: on CPUs without AMX. Measured (jax 0.10.2, `tools/bench_model.py
    --gemms`): on a 2-core Intel Xeon with AMX such products fell back to about 200 GFLOP/s
    against 1,000+ for the plain form, so the operand is copied transposed first; on a 2-core
    AMD EPYC (Zen 4, AVX-512 BF16) they ran at the plain form's 390-420 GFLOP/s, faster than
    copying first. On a Zen 5 EPYC they ran at 345-480 against 800-920 for the plain form, yet
    copying first made the base model's bf16 step slower (0.95-0.97 of PyTorch's time against
    0.91-0.93), so the copy stays for AMX only."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # not Linux: keep the copy, which is fast everywhere measured
        return False
    return "amx_bf16" not in flags.split()


def transposed_copy(a: Array) -> Array:
    """a [M, K] -> a.T [K, M], materialized. XLA folds a plain `a.T` into the product, and most
    bf16 products with a transposed operand then run converted to float32 (about 200 GFLOP/s
    on XLA:CPU, jax 0.10.2; `tools/bench_model.py --gemms`). Through a 3-D transpose it stays
    a copy, and the product runs natively (500-1,000 GFLOP/s)."""
    return jnp.transpose(a[..., None], (1, 0, 2)).reshape(a.shape[1], a.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tied_logits(h: Array, table: Array, bias: Array, mkl: bool = False) -> Array:
    """h [..., D] @ table [V, D].T + bias [V] -> [..., V], with a hand-written backward.

    Used on CPU: autodiff's backward transposes the [T, V] logit gradient (a copy the size of
    the logits) for table.T-shaped products and sums it over T with a column reduction that
    XLA:CPU's YNNPACK path runs very slowly for V ~ 50K (jax 0.10.2). Same math, same forward.
    In bf16 on CPUs that copy a transposed second operand (AMX), fewer rows than D (the masked
    positions of a batch) copy the [T, V] result transposed rather than the [V, D] table: on a
    2-core Xeon the base model's masked step went from 1.21 to 1.15 of PyTorch's time.
    """
    V, D = table.shape
    h2 = h.reshape(-1, D)
    if _copies_table(h2, mkl):
        # table.T would be copied ([D, V], the table's size): for fewer rows than D (the
        # masked positions of a batch) the product is taken as table @ h.T and its rounded
        # [V, T] result, the smaller array, is copied transposed instead
        logits = transposed_copy(product(table, h2, trans_b=True, mkl=mkl).astype(h.dtype))
    else:
        logits = product(h2, table, trans_b=True, mkl=mkl).astype(h.dtype)  # f32 accumulation
    return logits.reshape(*h.shape[:-1], V) + bias


def _copies_table(h2: Array, mkl: bool) -> bool:
    """Whether h2 @ table.T on this route would copy the table transposed, and copying the
    [T, V] result instead is smaller (T < D rows)."""
    return (not mkl and h2.dtype == jnp.bfloat16 and not bf16_transposed_b_native()
            and h2.shape[0] < h2.shape[1])


def _tied_logits_fwd(h, table, bias, mkl):
    return tied_logits(h, table, bias, mkl), (h, table)


def _tied_logits_bwd(mkl, res, g):
    h, table = res
    (V, D), T = table.shape, g.size // table.shape[0]
    g2, h2 = g.reshape(T, V), h.reshape(T, D)
    dh = product(g2, table, mkl=mkl).astype(h.dtype).reshape(h.shape)
    dtable = product(g2, h2, trans_a=True, mkl=mkl).astype(table.dtype)
    dbias = jnp.einsum("T,TV->V", jnp.ones((T,), g.dtype), g2,  # a dot, not a column reduce
                       preferred_element_type=jnp.float32).astype(g.dtype)
    return dh, dtable, dbias


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)
