"""Attention with dropout on the weights as one fused kernel (`model.attention="pallas"`).

The paper trains with attention dropout 0.1 (Table 9). cuDNN's flash attention, which XLA
reaches through `jax.nn.dot_product_attention`, has no dropout there, so the paper's recipe
otherwise takes XLA's path, which writes the [B, N, L, S] weights, their dropout mask and
their gradients to memory in every layer. This is FlashAttention-2's scheme (Dao, 2023) in
Pallas (Triton on a GPU; Pallas's interpreter elsewhere, for tests): the weights live only in
registers, a block of keys at a time, with an online softmax, and the backward recomputes them
from the saved log-sum-exp. The softmax runs in base 2 (logits times log2 e, exp2, a base-2
log-sum-exp), as FlashAttention's CUDA kernels do: exp2 is one GPU instruction, where exp costs
about ten. (JAX deprecated Pallas's Triton backend in 0.11 in favour of Mosaic GPU; 0.11.2, the
GPU image's, compiles these kernels for an H100, and 0.12.1 still has it.)

The dropout mask is never stored either: each weight's keep bit is a keyed hash of where it is
(batch row, head, query, key; `hash_rng.mix`, two rounds), recomputed wherever it is needed.
So the forward, the backward and a rematerialized forward see the same mask, the mask is a
function of the step's dropout key alone (a resumed run draws the same masks; cuDNN's own
dropout keeps a host-side counter instead, which restarts with the process), and under a mesh
each device hashes the global row and head indices it holds (`_ids`), so the masks
do not depend on the mesh either.

    h = mix(mix((i * 2**15 + j // 2) ^ k0) ^ k1)      one hash for keys j = 2c, 2c + 1
    keep[b, n, i, j] = (h >> 16 if j is even else h & 0xFFFF) >= round(rate * 2**16)
    k0 = mix(mix(b ^ seed0) ^ n),  k1 = mix(k0 ^ seed1)

Sixteen bits a weight give the rate to within 2**-17 and halve the hashing, which by the
instruction count is most of the kernels' non-product work (tools/gpu_estimates.md).

Kept weights are scaled by 1 / (1 - rate), as `flax.linen.Dropout` does. Padding comes as a
[B, S] boolean of the real keys, packed rows (DOC-SENTENCES, SENTENCE-PAIR+NSP) as [B, L]
segment ids; both become per-query and per-key segment ids that the kernels compare. Lengths
are padded up to whole blocks here (masked keys, discarded queries; 512 needs none). Lengths up
to 65,536 and a power-of-two head dimension of at least 16 (64 in base and large).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from robertax.hash_rng import mix

Array = jax.Array

_MASKED = -1e30  # a masked key's logit: exp2() of it is 0, and no inf - inf NaN
# The kernels' softmax works in base 2: exp2 is one instruction on a GPU (ex2.approx), where
# exp's range reduction costs several.
_LOG2E = math.log2(math.e)
# Untuned: FlashAttention-2's usual sizes for a head dimension of 64 (tools/bench_attention.py
# times others on a GPU by setting these).
BLOCK_Q, BLOCK_K = 128, 64  # the forward's query and key blocks
BLOCK_BWD = 64  # both blocks of the backward's two kernels
NUM_WARPS, NUM_STAGES = 4, 2  # Triton's launch: warps a program, software-pipelining stages


def threshold(rate: float) -> np.uint32:
    """A weight is kept where its 16 hash bits are >= this (probability 1 - rate, to within
    2**-17)."""
    return np.uint32(min(round(rate * 2 ** 16), 2 ** 16 - 1))


def head_keys(ids, b: Array, n: Array) -> tuple[Array, Array]:
    """The two 32-bit words keying one (batch row, head)'s mask. ids = (seed0, seed1,
    global row of local row 0, global head of local head 0), uint32; b, n local indices."""
    row = ids[2] + b.astype(jnp.uint32)
    head = ids[3] + n.astype(jnp.uint32)
    k0 = mix(mix(row ^ ids[0]) ^ head)
    return k0, mix(k0 ^ ids[1])


def keep_bits(k0: Array, k1: Array, rows: Array, pairs: Array) -> Array:
    """16 hash bits (uint32 below 2**16) for each weight of rows x keys 2·pairs, 2·pairs + 1 of
    one head: one 32-bit hash per pair of neighbouring keys, its high half for the even key and
    its low half for the odd one (inputs broadcast together; the last axis doubles)."""
    h = mix(mix(((rows << 15) + pairs) ^ k0) ^ k1)
    halves = jnp.stack([h >> 16, h & np.uint32(0xFFFF)], axis=-1)
    return halves.reshape(*halves.shape[:-2], 2 * halves.shape[-2])


def keep_mask(ids: Array, B: int, N: int, L: int, S: int, rate: float) -> Array:
    """The whole [B, N, L, S] keep mask the kernels apply (for tests and the XLA reference)."""
    b = lax.broadcasted_iota(jnp.uint32, (B, N, 1, 1), 0)
    n = lax.broadcasted_iota(jnp.uint32, (B, N, 1, 1), 1)
    k0, k1 = head_keys(ids, b, n)
    rows = lax.broadcasted_iota(jnp.uint32, (1, 1, L, 1), 2)
    pairs = lax.broadcasted_iota(jnp.uint32, (1, 1, 1, (S + 1) // 2), 3)
    return (keep_bits(k0, k1, rows, pairs) >= threshold(rate))[..., :S]


def _dot(a: Array, b: Array, contract: tuple[int, int]) -> Array:
    """a @ b contracting a's dim contract[0] with b's contract[1], accumulated in float32."""
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                           preferred_element_type=jnp.float32)


def _iota(n: int, start, axis: int) -> Array:
    shape = (n, 1) if axis == 0 else (1, n)
    return lax.broadcasted_iota(jnp.uint32, shape, axis) + start.astype(jnp.uint32)


def _logits2(q, k, qseg, kseg, scale):
    """The logits q k^T * scale in base 2 (times log2(e), for exp2), _MASKED where a query may
    not see a key: another input of a packed row (segment ids differ) or padding (key segment
    0)."""
    allowed = (qseg[:, None] == kseg[None, :]) & (kseg[None, :] != 0)
    return jnp.where(allowed, _dot(q, k, (1, 1)) * (scale * _LOG2E), _MASKED)  # [bq, bk]


# ---------------------------------------------------------------------------------------------
# Kernels. Refs hold one (batch row, head)'s blocks: q/o/do [bq, K], k/v [S, K] or [bk, K],
# lse/delta/qseg [L] or [bq], kseg [S] or [bk]. Grids are (B, N, blocks).

def _fwd_kernel(ids_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, *, rate,
                scale, block_k):
    i = pl.program_id(2)
    bq, K = q_ref.shape
    S = k_ref.shape[0]
    k0, k1 = _program_keys(ids_ref)
    rows = _iota(bq, i * bq, 0)
    q, qseg = q_ref[...], qseg_ref[...]

    def body(j, carry):
        acc, m, l = carry
        start = pl.multiple_of(j * block_k, block_k)
        kb, vb = k_ref[pl.ds(start, block_k), :], v_ref[pl.ds(start, block_k), :]
        s = _logits2(q, kb, qseg, kseg_ref[pl.ds(start, block_k)], scale)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        l = l * alpha + jnp.sum(p, axis=1)  # the softmax's sum counts dropped weights too
        if rate:
            pairs = _iota(block_k // 2, j * (block_k // 2), 1)
            p = jnp.where(keep_bits(k0, k1, rows, pairs) >= threshold(rate), p, 0.0)
        acc = acc * alpha[:, None] + _dot(p.astype(vb.dtype), vb, (1, 0))
        return acc, m_new, l

    init = (jnp.zeros((bq, K), jnp.float32), jnp.full((bq,), _MASKED, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(0, S // block_k, body, init)
    o_ref[...] = (acc * (1.0 / ((1.0 - rate) * l))[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(l)  # the log-sum-exp in base 2


def _program_keys(ids_ref) -> tuple[Array, Array]:
    """This program's (batch row, head) mask key; read at the kernel's top level (Pallas's
    interpreter has program ids only there)."""
    ids = [ids_ref[t] for t in range(4)]
    return head_keys(ids, pl.program_id(0), pl.program_id(1))


def _weights_grads(keys, q, k, v, do, lse, delta, qseg, kseg, rows, pairs, *, rate, scale):
    """One block's dropped weights and ds (the logits' gradient); pairs: its keys' pair
    indices (keep_bits)."""
    p = jnp.exp2(_logits2(q, k, qseg, kseg, scale) - lse[:, None])  # [bq, bk]
    dp = _dot(do, v, (1, 1))  # the dropped weights' gradient
    if rate:
        k0, k1 = keys
        keep = keep_bits(k0, k1, rows, pairs) >= threshold(rate)
        inv = 1.0 / (1.0 - rate)
        pd = jnp.where(keep, p * inv, 0.0)
        dp = jnp.where(keep, dp * inv, 0.0)
    else:
        pd = p
    # softmax's backward; delta = rowsum(do * o) = rowsum(p * dp), o including the dropout
    return pd, p * (dp - delta[:, None])


def _dkdv_kernel(ids_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref,
                 dk_ref, dv_ref, *, rate, scale, block_q):
    j = pl.program_id(2)
    bk, K = k_ref.shape
    L = q_ref.shape[0]
    k, v = k_ref[...], v_ref[...]
    kseg = kseg_ref[...]
    pairs = _iota(bk // 2, j * (bk // 2), 1)
    keys = _program_keys(ids_ref)

    def body(i, carry):
        dk, dv = carry
        start = pl.multiple_of(i * block_q, block_q)
        q = q_ref[pl.ds(start, block_q), :]
        do = do_ref[pl.ds(start, block_q), :]
        pd, ds = _weights_grads(keys, q, k, v, do, lse_ref[pl.ds(start, block_q)],
                                delta_ref[pl.ds(start, block_q)],
                                qseg_ref[pl.ds(start, block_q)], kseg,
                                _iota(block_q, start, 0), pairs, rate=rate, scale=scale)
        dv = dv + _dot(pd.astype(do.dtype), do, (0, 0))
        dk = dk + _dot(ds.astype(q.dtype), q, (0, 0))
        return dk, dv

    zeros = jnp.zeros((bk, K), jnp.float32)
    dk, dv = lax.fori_loop(0, L // block_q, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(ids_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref,
               dq_ref, *, rate, scale, block_k):
    i = pl.program_id(2)
    bq, K = q_ref.shape
    S = k_ref.shape[0]
    q, do, lse, delta, qseg = (q_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
                               qseg_ref[...])
    rows = _iota(bq, i * bq, 0)
    keys = _program_keys(ids_ref)

    def body(j, dq):
        start = pl.multiple_of(j * block_k, block_k)
        kb, vb = k_ref[pl.ds(start, block_k), :], v_ref[pl.ds(start, block_k), :]
        _, ds = _weights_grads(keys, q, kb, vb, do, lse, delta, qseg,
                               kseg_ref[pl.ds(start, block_k)], rows,
                               _iota(block_k // 2, j * (block_k // 2), 1), rate=rate,
                               scale=scale)
        return dq + _dot(ds.astype(kb.dtype), kb, (1, 0))

    dq = lax.fori_loop(0, S // block_k, body, jnp.zeros((bq, K), jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


# ---------------------------------------------------------------------------------------------
# pallas_calls on one device's shard: ids uint32[4], q [B, L, N, K], k/v [B, S, N, K], qseg
# [B, L] and kseg [B, S] int32 segment ids (a query sees the keys of its own segment; 0: padding).

def _name(kernel: str, rate: float) -> str:
    """The kernel's name in the compiled program (tools/hlo_cost.py reads it)."""
    return f"flash_attention_{kernel}" + ("_dropout" if rate else "")


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def _params():
    if _interpret():
        return None
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def _specs(L, S, K, bq, bk, q_whole: bool, k_whole: bool):
    """BlockSpecs for ids, the [B, L|S, N, K] arrays, the [B, N, L] rows and the [B, L] and
    [B, S] segment ids, on a (B, N, blocks) grid; the blocked side of q or k is indexed by the
    grid's last axis."""
    q_rows, k_rows = (L if q_whole else bq), (S if k_whole else bk)
    q = pl.BlockSpec((None, q_rows, None, K),
                     (lambda b, n, i: (b, 0, n, 0)) if q_whole else (lambda b, n, i: (b, i, n, 0)))
    k = pl.BlockSpec((None, k_rows, None, K),
                     (lambda b, n, i: (b, 0, n, 0)) if k_whole else (lambda b, n, i: (b, i, n, 0)))
    row = pl.BlockSpec((None, None, q_rows),
                       (lambda b, n, i: (b, n, 0)) if q_whole else (lambda b, n, i: (b, n, i)))
    qseg = pl.BlockSpec((None, q_rows),
                        (lambda b, n, i: (b, 0)) if q_whole else (lambda b, n, i: (b, i)))
    kseg = pl.BlockSpec((None, k_rows),
                        (lambda b, n, i: (b, 0)) if k_whole else (lambda b, n, i: (b, i)))
    return pl.BlockSpec((4,), lambda b, n, i: (0,)), q, k, row, qseg, kseg


def _forward_local(ids, q, k, v, qseg, kseg, rate):
    B, L, N, K = q.shape
    S = k.shape[1]
    bq, bk = min(BLOCK_Q, L), min(BLOCK_K, S)
    ids_s, q_s, k_s, row_s, qseg_s, kseg_s = _specs(L, S, K, bq, bk, q_whole=False,
                                                    k_whole=True)
    kernel = functools.partial(_fwd_kernel, rate=rate, scale=1 / math.sqrt(K), block_k=bk)
    return pl.pallas_call(
        kernel, grid=(B, N, L // bq),
        in_specs=[ids_s, q_s, k_s, k_s, qseg_s, kseg_s], out_specs=[q_s, row_s],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((B, N, L), jnp.float32)],
        compiler_params=_params(), interpret=_interpret(), name=_name("fwd", rate),
    )(ids, q, k, v, qseg, kseg)


def _backward_local(ids, q, k, v, qseg, kseg, o, lse, do, rate):
    B, L, N, K = q.shape
    S = k.shape[1]
    bq, bk = min(BLOCK_BWD, L), min(BLOCK_BWD, S)
    delta = jnp.einsum("BLNK,BLNK->BNL", o.astype(jnp.float32), do.astype(jnp.float32))
    common = dict(rate=rate, scale=1 / math.sqrt(K))
    # dK, dV: a block of keys per program, looping over all queries.
    ids_s, qw, kb, roww, qsegw, ksegb = _specs(L, S, K, bq, bk, q_whole=True, k_whole=False)
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, block_q=bq, **common), grid=(B, N, S // bk),
        in_specs=[ids_s, qw, kb, kb, qw, roww, roww, qsegw, ksegb], out_specs=[kb, kb],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_params(), interpret=_interpret(), name=_name("dkdv", rate),
    )(ids, q, k, v, do, lse, delta, qseg, kseg)
    # dQ: a block of queries per program, looping over all keys.
    ids_s, qb, kw, rowb, qsegb, ksegw = _specs(L, S, K, bq, bk, q_whole=False, k_whole=True)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, block_k=bk, **common), grid=(B, N, L // bq),
        in_specs=[ids_s, qb, kw, kw, qb, rowb, rowb, qsegb, ksegw], out_specs=qb,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_params(), interpret=_interpret(), name=_name("dq", rate),
    )(ids, q, k, v, do, lse, delta, qseg, kseg)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# Under a mesh: each device runs the kernels on its batch rows and heads. `rows` and `heads`
# (aranges, sharded with the batch and head axes) tell each shard the global indices it holds.

def _ids(seed, rows, heads):
    return jnp.concatenate([seed, rows[:1], heads[:1]]).astype(jnp.uint32)


def _axes(arg_shapes):
    """The mesh axes of q's ([B, L, N, K], the fourth operand) batch and head dimensions."""
    spec = tuple(arg_shapes[3].sharding.spec) + (None,) * 4
    return spec[0], spec[2]


def _shardings(mesh, arg_shapes, kinds):
    batch, heads = _axes(arg_shapes)
    named = {"seed": P(None), "rows": P(batch), "heads": P(heads),
             "x": P(batch, None, heads, None), "lse": P(batch, heads, None),
             "seg": P(batch, None)}
    return tuple(NamedSharding(mesh, named[kind]) for kind in kinds)


_ARGS = ("seed", "rows", "heads", "x", "x", "x", "seg", "seg", "x", "lse", "x")


def _partitioned(local, n_args: int, outs: tuple[str, ...], rule: str):
    """`local` (on one shard's rows and heads) as a custom_partitioning call: sharded as q's
    batch and head axes are, everything else replicated."""
    fn = custom_partitioning(local, static_argnums=(n_args,))

    def partition(rate, mesh, arg_shapes, result_shape):
        return (mesh, functools.partial(local, rate=rate), _shardings(mesh, arg_shapes, outs),
                _shardings(mesh, arg_shapes, _ARGS[:n_args]))

    def infer(rate, mesh, arg_shapes, result_shape):
        return _shardings(mesh, arg_shapes, outs)

    fn.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule)
    return fn


def _forward_shard(seed, rows, heads, q, k, v, qseg, kseg, rate):
    return tuple(_forward_local(_ids(seed, rows, heads), q, k, v, qseg, kseg, rate))


def _backward_shard(seed, rows, heads, q, k, v, qseg, kseg, o, lse, do, rate):
    return _backward_local(_ids(seed, rows, heads), q, k, v, qseg, kseg, o, lse, do, rate)


_forward = _partitioned(_forward_shard, 8, ("x", "lse"),
                        "s, b, n, b l n k, b t n k, b t n k, b l, b t -> b l n k, b n l")
_backward = _partitioned(_backward_shard, 11, ("x", "x", "x"),
                         "s, b, n, b l n k, b t n k, b t n k, b l, b t, b l n k, b n l, b l n k "
                         "-> b l n k, b t n k, b t n k")


# ---------------------------------------------------------------------------------------------

def _check(q: Array, k: Array, rate: float) -> None:
    K = q.shape[-1]
    if max(q.shape[1], k.shape[1]) > 2 ** 16:
        raise ValueError(f"model.attention='pallas' takes lengths up to 65,536; got queries "
                         f"{q.shape[1]}, keys {k.shape[1]}")
    if K < 16 or K & (K - 1):
        raise ValueError(f"model.attention='pallas' needs a power-of-two head dimension of at "
                         f"least 16; got {K}")
    if not 0 <= rate < 1:
        raise ValueError(f"attention dropout rate must be in [0, 1), got {rate}")


def padded_length(n: int) -> int:
    """n rounded up to whole blocks: the next power of two from 16 to 128, else a multiple of
    128 (every block, forward and backward, divides it)."""
    block = min(max(BLOCK_Q, BLOCK_K, BLOCK_BWD), max(16, 1 << (n - 1).bit_length()))
    return -(-n // block) * block


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(seed, q, k, v, qseg, kseg, rate):
    return _run_forward(seed, q, k, v, qseg, kseg, rate)[0]


def _run_forward(seed, q, k, v, qseg, kseg, rate):
    # The global batch-row and head indices, sharded with q (see _partitioned).
    rows = jnp.arange(q.shape[0], dtype=jnp.uint32)
    heads = jnp.arange(q.shape[2], dtype=jnp.uint32)
    o, lse = _forward(seed, rows, heads, q, k, v, qseg, kseg, rate)
    return o, (seed, rows, heads, q, k, v, qseg, kseg, o, lse)


def _attention_bwd(rate, res, do):
    seed, rows, heads, q, k, v, qseg, kseg, o, lse = res
    dq, dk, dv = _backward(seed, rows, heads, q, k, v, qseg, kseg, o, lse, do.astype(q.dtype),
                           rate)
    return None, dq, dk, dv, None, None


_attention.defvjp(_run_forward, _attention_bwd)


def _segments(B: int, L: int, S: int, kv_valid: Optional[Array],
              segment_ids: Optional[Array]) -> tuple[Array, Array]:
    """Query and key segment ids, int32 [B, L] and [B, S]: a query sees the keys of its own
    segment, and no key of segment 0 (padding)."""
    if segment_ids is not None:
        if L != S:
            raise ValueError(f"segment_ids are for self-attention; got {L} queries, {S} keys")
        seg = segment_ids.astype(jnp.int32)
        kseg = seg if kv_valid is None else jnp.where(kv_valid, seg, 0)
        return seg, kseg
    kseg = jnp.ones((B, S), jnp.int32) if kv_valid is None else kv_valid.astype(jnp.int32)
    return jnp.ones((B, L), jnp.int32), kseg


def attention(q: Array, k: Array, v: Array, kv_valid: Optional[Array], seed: Array,
              rate: float, segment_ids: Optional[Array] = None) -> Array:
    """softmax(q k^T / sqrt(K)) with dropout `rate` on the weights, times v.

    q [B, L, N, K], k and v [B, S, N, K] (the same dtype); kv_valid [B, S] bool (True for a real
    key) or None; seed uint32[2] (the layer's dropout key); rate a Python float (0: no
    dropout); segment_ids [B, L] (self-attention over packed rows: a query attends to the keys
    of its own segment; 0 is padding) or None. Returns [B, L, N, K].
    """
    _check(q, k, rate)
    B, L, S = q.shape[0], q.shape[1], k.shape[1]
    qseg, kseg = _segments(B, L, S, kv_valid, segment_ids)
    Lp, Sp = padded_length(L), padded_length(S)
    if Lp != L:  # padded queries (segment 0) see no key; their rows are dropped below
        q = jnp.pad(q, ((0, 0), (0, Lp - L), (0, 0), (0, 0)))
        qseg = jnp.pad(qseg, ((0, 0), (0, Lp - L)))
    if Sp != S:  # padded keys are segment 0: masked
        k, v = (jnp.pad(x, ((0, 0), (0, Sp - S), (0, 0), (0, 0))) for x in (k, v))
        kseg = jnp.pad(kseg, ((0, 0), (0, Sp - S)))
    out = _attention(jnp.asarray(seed, jnp.uint32).reshape(2), q, k, v, qseg, kseg, float(rate))
    return out[:, :L] if Lp != L else out


def reference(q: Array, k: Array, v: Array, kv_valid: Optional[Array], seed: Array,
              rate: float, segment_ids: Optional[Array] = None) -> Array:
    """The same attention, mask and all, in plain XLA operations (for tests)."""
    B, L, N, K = q.shape
    S = k.shape[1]
    qseg, kseg = _segments(B, L, S, kv_valid, segment_ids)
    logits = jnp.einsum("BLNK,BSNK->BNLS", q, k, preferred_element_type=jnp.float32)
    allowed = (qseg[:, :, None] == kseg[:, None, :]) & (kseg[:, None, :] != 0)
    logits = jnp.where(allowed[:, None], logits / math.sqrt(K), _MASKED)
    w = jax.nn.softmax(logits, axis=-1)
    if rate:
        ids = _ids(jnp.asarray(seed, jnp.uint32).reshape(2), jnp.zeros(1, jnp.uint32),
                   jnp.zeros(1, jnp.uint32))
        w = jnp.where(keep_mask(ids, B, N, L, S, rate), w / (1 - rate), 0.0)
    return jnp.einsum("BNLS,BSNK->BLNK", w.astype(v.dtype), v,
                      preferred_element_type=jnp.float32).astype(q.dtype)
