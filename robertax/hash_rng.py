"""A cheap counter-based random generator for dropout masks (`config.dropout_rng="hash"`).

Each element's bits are a keyed hash of its position in the array, so, like threefry, the
masks cost no memory of their own: XLA fuses the hash into the kernel that uses the mask, and
under a mesh every device hashes only the positions it holds (the masks do not depend on the
mesh). The hash is two rounds of a 32-bit integer mixer (two multiplies and three shift-xors
each, the "lowbias32" constants of Wellons' hash-prospector). In the base train step
compiled for an H100 that is about 23 integer operations a masked element, against threefry's
126 (20 rounds on two words) and rbg's 41 (Philox, whose bits also go through memory),
as tools/hlo_cost.py counts them. JAX's own philox2x32 cannot be used under a mesh
with jax 0.10.2: its `chlo.mulhi` fails to lower once sharded ("Unable to convert MHLO to
StableHLO").

Keys are threefry keys (two 32-bit words) and are split and folded in by threefry, so only the
bulk draws are cheap; the bits are a keyed permutation of the element index, statistically
fine for Bernoulli masks (tests check means, neighbours and keys) but not a generator for
anything that needs cryptographic or long-stream quality.

    bits[i] = mix(mix(i ^ k0) ^ k1)          i: the element's row-major index, below 2**32
    bits[r, j] = mix(mix(j ^ k0) ^ mix(r ^ k1))   arrays of 2**32 elements or more: r the
                                                  leading index, j the index within its row
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
from jax import lax

_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_WORD2 = np.uint32(0x9E3779B9)  # the second 32-bit word of a 64-bit draw: k1 xor this


def mix(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer mixer: x ^= x >> 16; x *= M1; x ^= x >> 15; x *= M2;
    x ^= x >> 16 (uint32, wrapping)."""
    x = x ^ (x >> 16)
    x = x * _M1
    x = x ^ (x >> 15)
    x = x * _M2
    return x ^ (x >> 16)


def _row_major_index(shape: tuple[int, ...], dims: range) -> jax.Array:
    """The row-major index over `dims` of `shape`, broadcast to `shape` (uint32, wrapping).
    Built from one iota per dimension, which XLA's SPMD partitioner shards without
    communication."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for d in reversed(dims):
        iota = lax.broadcasted_iota(jnp.uint32, shape, d)
        index = index + (iota * np.uint32(stride) if stride != 1 else iota)
        stride *= shape[d]
    return index


def hash_bits32(k0: jax.Array, k1: jax.Array, shape: tuple[int, ...],
                split_leading: bool | None = None) -> jax.Array:
    """32 random bits for each element of `shape` under the key words k0, k1 (uint32 scalars).
    `split_leading` (default: only when the array has 2**32 elements or more) hashes the
    leading index separately, so that no two elements share an index."""
    shape = tuple(int(d) for d in shape)
    if split_leading is None:
        split_leading = math.prod(shape) >= 2**32
    if not split_leading:
        return mix(mix(_row_major_index(shape, range(len(shape))) ^ k0) ^ k1)
    if len(shape) < 2 or math.prod(shape[1:]) >= 2**32:
        raise ValueError(f"hash dropout generator: cannot index an array of shape {shape}; "
                         "each row (all but the leading dimension) must hold under 2**32 "
                         "elements")
    row = lax.broadcasted_iota(jnp.uint32, shape, 0)
    return mix(mix(_row_major_index(shape, range(1, len(shape))) ^ k0) ^ mix(row ^ k1))


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise TypeError(f"hash dropout generator: expected a uint32[2] key, got "
                        f"{key.dtype}{list(key.shape)}")
    if bit_width not in (8, 16, 32, 64):
        raise TypeError(f"hash dropout generator: bit_width must be 8, 16, 32 or 64, got "
                        f"{bit_width}")
    bits = hash_bits32(key[0], key[1], shape)
    if bit_width == 64:
        low = hash_bits32(key[0], key[1] ^ _WORD2, shape)
        return (bits.astype(jnp.uint64) << 32) | low.astype(jnp.uint64)
    if bit_width < 32:  # the high bits
        bits = (bits >> (32 - bit_width)).astype(jnp.dtype(f"uint{bit_width}"))
    return bits


_threefry = jex_random.threefry_prng_impl
HASH_IMPL = jex_random.define_prng_impl(
    key_shape=(2,), seed=_threefry.seed, split=_threefry.split, random_bits=_random_bits,
    fold_in=_threefry.fold_in, name="robertax_hash32", tag="rhash")
