"""robertax.fused_norm (model.fused_norm): the residual add, dropout and LayerNorm in one kernel,
run here through Pallas's interpreter, against plain XLA and the plain model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from robertax import fused_norm as F
from robertax import hash_rng, model as M

KEY = jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32)


def padded_ids(vocab=300, B=3, L=16, seed=6):
    """<s> ... </s> rows of 16, 11 and 3 tokens, padded."""
    ids = np.random.default_rng(seed).integers(4, vocab, size=(B, L))
    for b, n in enumerate([L, L - 5, 3][:B]):
        ids[b, 0], ids[b, n - 1], ids[b, n:] = 0, 2, 1
    return jnp.asarray(ids)


def _inputs(B=2, L=16, D=96, dtype=jnp.float32, seed=0):
    """D = 96: three 32-wide chunks (Triton's loads are powers of two; base's 768 is three of
    256)."""
    ks = jax.random.split(jax.random.key(seed), 6)
    x, h = (jax.random.normal(k, (B, L, D)).astype(dtype) for k in ks[:2])
    scale = 1 + 0.3 * jax.random.normal(ks[2], (D,))
    bias, h_bias = (0.3 * jax.random.normal(k, (D,)) for k in ks[3:5])
    return x, h, h_bias, scale, bias, jax.random.normal(ks[5], (B, L, D))


@pytest.mark.parametrize("rate", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_equal_plain_xla(rate, dtype):
    """Output and every gradient (x, h, h's bias, scale, bias) against the same computation in
    plain XLA operations, mask included."""
    x, h, h_bias, scale, bias, w = _inputs(dtype=dtype)
    key = KEY if rate else None

    def loss(fn):
        return lambda *a: (fn(*a[:2], a[3], a[4], key, rate, 1e-5, h_bias=a[2])
                           .astype(jnp.float32) * w).sum()

    args = (x, h, h_bias, scale, bias)
    got = jax.jit(jax.value_and_grad(loss(F.residual_norm), argnums=range(5)))(*args)
    want = jax.jit(jax.value_and_grad(loss(F.reference), argnums=range(5)))(*args)
    y = F.residual_norm(x, h, scale, bias, key, rate, 1e-5, h_bias=h_bias)
    y_ref = F.reference(x, h, scale, bias, key, rate, 1e-5, h_bias=h_bias)
    assert y.dtype == dtype and y.shape == x.shape
    if dtype == jnp.float32:
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=2e-6)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=5e-6)
    else:  # the same roundings, up to one bf16 ulp where float32 sums differ in order
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                                   rtol=8e-3, atol=8e-3)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                       rtol=2e-2, atol=2e-2)
    dropped = float(jnp.mean(F.keep_mask(KEY, x.shape, 0.1)))
    assert 0.85 < dropped < 0.95  # ~10% dropped over 3,072 elements


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.3])
def test_mask_is_nn_dropouts_under_the_hash_generator(rate):
    """The kernels' mask is the one jax.random.bernoulli (nn.Dropout) draws from a hash key
    with these words, bit for bit (0.25 and 0.5 put the threshold exactly on a 2**-23 step)."""
    key = jax.random.wrap_key_data(KEY, impl=hash_rng.HASH_IMPL)
    shape = (3, 40, 64)
    want = jax.random.bernoulli(key, 1.0 - rate, shape)
    np.testing.assert_array_equal(np.asarray(F.keep_mask(KEY, shape, rate)), np.asarray(want))


def test_model_with_fused_norm_is_the_same_model():
    """model.fused_norm: the same parameters, and in float32 the same loss and gradients as the
    plain model in training (dropout 0.1, the same masks; without dropout:
    test_model.test_speed_switch_is_the_same_model); other dropout generators are refused with
    the setting to change."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, num_layers=2)
    plain, fused = (M.RobertaForMaskedLM(config.replace(fused_norm=f)) for f in (False, True))
    params, fused_init = (jax.jit(lambda k, m=m: M.init_params(m, k))(jax.random.key(5))
                          for m in (plain, fused))
    for a, b in zip(jax.tree.leaves(fused_init), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    params = jax.tree.map(lambda p: p * 5.0 if p.ndim >= 2 else p + 0.1, params)
    ids = padded_ids()
    train = dict(deterministic=False, rngs={"dropout": jax.random.key(3, impl=hash_rng.HASH_IMPL)})
    loss = lambda m: lambda p: (m.apply({"params": p}, ids, **train) ** 2).mean()  # noqa: E731
    (la, ga), (lb, gb) = (jax.jit(jax.value_and_grad(loss(m)))(params) for m in (plain, fused))
    np.testing.assert_allclose(float(lb), float(la), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    off = jax.tree.map(lambda g: float(jnp.abs(g).max()), gb)["encoder"]["layers"]
    assert min(off["mlp_norm"]["scale"], off["down"]["bias"], off["attn"]["out"]["bias"]) > 0
    threefry = dict(deterministic=False, rngs={"dropout": jax.random.key(3)})
    with pytest.raises(ValueError, match=r"dropout_rng='hash' \(the dropout key here is "
                                         r".*threefry"):
        jax.eval_shape(lambda p: fused.apply({"params": p}, ids, **threefry), params)


def test_masks_and_results_do_not_depend_on_the_mesh():
    """Batch rows split over 8 or 4 devices (custom_partitioning): each shard hashes its global
    rows, so outputs and gradients equal one device's."""
    x, h, h_bias, scale, bias, w = _inputs(B=8, L=16, D=64)

    def loss(x, h, hb, scale, bias):
        return (F.residual_norm(x, h, scale, bias, KEY, 0.1, 1e-5, h_bias=hb) * w).sum()

    step = jax.jit(jax.value_and_grad(loss, argnums=range(5)))
    want = step(x, h, h_bias, scale, bias)
    for shape in ((8, 1), (4, 2)):
        mesh = Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "other"))
        rows = NamedSharding(mesh, P("data", None, None))
        xs, hs = jax.device_put(x, rows), jax.device_put(h, rows)
        got = step(xs, hs, h_bias, scale, bias)
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        assert got[1][0].sharding.spec[0] == "data"  # x's gradient stays split by rows


def test_bad_inputs_are_named():
    x, h, h_bias, scale, bias, _ = _inputs()
    with pytest.raises(ValueError, match="x and h must be"):
        F.residual_norm(x, h[:, :8], scale, bias, KEY, 0.1, 1e-5)
    with pytest.raises(ValueError, match="dropout needs a key"):
        F.residual_norm(x, h, scale, bias, None, 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        F.residual_norm(x, h, scale, bias, KEY, 1.0, 1e-5)
