"""The hash dropout generator: its documented formula, and masks that look like independent
Bernoulli draws (means, bits, neighbours, keys)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from robertax import hash_rng, train

N = 1 << 20  # draws per statistic: a proportion's standard error is at most 0.0005


def np_mix(x):
    x = x.astype(np.uint64) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def key(seed=0):
    return jax.random.key(seed, impl=hash_rng.HASH_IMPL)


def within(value, expected, n, sigmas=5.0):
    se = np.sqrt(expected * (1 - expected) / n)
    assert abs(value - expected) < sigmas * se, (value, expected, se)


def test_bits_follow_the_documented_formula():
    k = key(3)
    k0, k1 = (np.uint64(w) for w in np.asarray(jax.random.key_data(k)))
    shape = (3, 5, 7)
    i = np.arange(np.prod(shape), dtype=np.uint64).reshape(shape)
    np.testing.assert_array_equal(np.asarray(jax.random.bits(k, shape)),
                                  np_mix(np_mix(i ^ k0) ^ k1).astype(np.uint32))
    split = hash_rng.hash_bits32(jnp.uint32(k0), jnp.uint32(k1), shape, split_leading=True)
    r, j = np.indices((3, 35)).astype(np.uint64)
    np.testing.assert_array_equal(
        np.asarray(split), (np_mix(np_mix(j ^ k0) ^ np_mix(r ^ k1))).reshape(shape))
    # narrower draws are the high bits; jit or not, the same bits
    np.testing.assert_array_equal(np.asarray(jax.random.bits(k, shape, jnp.uint16)),
                                  np.asarray(jax.random.bits(k, shape)) >> 16)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.random.bits, static_argnums=1)(
        k, shape)), np.asarray(jax.random.bits(k, shape)))


@pytest.mark.parametrize("split_leading", [False, True])
def test_bits_are_balanced(split_leading):
    k0, k1 = jax.random.key_data(key(1))
    bits = np.asarray(hash_rng.hash_bits32(k0, k1, (256, N // 256), split_leading)).ravel()
    for b in range(32):
        within(((bits >> b) & 1).mean(), 0.5, N)
    top = np.bincount(bits >> 24, minlength=256)  # chi-square of the top byte, 255 dof
    chi2 = ((top - N / 256) ** 2 / (N / 256)).sum()
    assert 150 < chi2 < 380, chi2  # both tails at about p = 1e-6


@pytest.mark.parametrize("split_leading", [False, True])
def test_masks_are_independent_of_neighbours_and_keys(split_leading):
    """Dropout keeps 90%: each mask's mean, and the share of pairs both kept (0.81) for
    neighbouring elements, neighbouring rows, the next step's key and another layer's key."""
    shape = (64, 128, 128)  # [batch, length, features]: N elements

    def mask(k):
        k0, k1 = jax.random.key_data(k)
        u = hash_rng.hash_bits32(k0, k1, shape, split_leading)
        return np.asarray(u < np.uint32(0.9 * 2**32))

    base = key(7)
    m = mask(base)
    within(m.mean(), 0.9, N)
    within((m[..., 1:] & m[..., :-1]).mean(), 0.81, N)  # next feature
    within((m[:, 1:] & m[:, :-1]).mean(), 0.81, N)  # next position
    within((m[1:] & m[:-1]).mean(), 0.81, N)  # next sequence
    for other in (jax.random.fold_in(base, 1), jax.random.split(base)[1], key(8)):
        o = mask(other)
        within(o.mean(), 0.9, N)
        within((m & o).mean(), 0.81, N)


def test_dropout_rng_config_picks_the_generator():
    k = train.make_dropout_rng(ConfigDict({"dropout_rng": "hash", "seed": 0}))
    assert jax.random.key_impl(k) == jax.random.key_impl(key())
    drops = jax.random.bernoulli(jax.random.fold_in(k, 5), 0.9, (N,))
    within(float(drops.mean()), 0.9, N)
    with pytest.raises(ValueError, match="dropout_rng must be one of .*hash.*'philox'"):
        train.make_dropout_rng(ConfigDict({"dropout_rng": "philox", "seed": 0}))


def test_unindexable_shapes_are_refused():
    k0 = k1 = jnp.uint32(0)
    with pytest.raises(ValueError, match=r"shape \(4294967296,\)"):
        hash_rng.hash_bits32(k0, k1, (2**32,))
