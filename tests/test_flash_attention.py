"""The fused attention kernel with dropout (`model.attention="pallas"`), run through Pallas's
interpreter on the CPU: the same output and gradients as plain XLA with the same mask, the mask's
statistics, the same masks on any mesh, and the model's path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from robertax import flash_attention as fa
from robertax import model as M

SEED = jnp.array([123, 456], jnp.uint32)


def _qkv(B, L, N, K, dtype=jnp.float32, key=0):
    ks = jax.random.split(jax.random.key(key), 3)
    return tuple(jax.random.normal(k, (B, L, N, K), jnp.float32).astype(dtype) for k in ks)


def _loss(fn, rate, valid, segment_ids=None):
    K = 16
    weights = jnp.cos(jnp.arange(K, dtype=jnp.float32))  # a cotangent that differs per column

    def loss(q, k, v):
        out = fn(q, k, v, valid, SEED, rate, segment_ids)
        return (out.astype(jnp.float32) * weights).sum()
    return loss


@pytest.mark.parametrize("rate", [0.0, 0.1])
@pytest.mark.parametrize("L,lengths,packed", [(256, None, False), (100, (100, 37), False),
                                              (128, (128, 37), True)])
def test_matches_xla_with_the_same_mask(rate, L, lengths, packed):
    """Forward and gradients against `reference` (softmax, the same keep mask, in XLA), float32.
    256: two query blocks and four key blocks a head; 100: padded inside to 128, and a row
    whose keys end at 37; packed: rows of two inputs (segment ids 1, 2) and padding."""
    B, N, K = 2, 2, 16
    q, k, v = _qkv(B, L, N, K)
    valid = None if lengths is None else jnp.arange(L)[None, :] < jnp.array(lengths)[:, None]
    seg = jnp.where(jnp.arange(L)[None] < jnp.array([50, 20])[:, None], 1, 2) if packed else None
    out = fa.attention(q, k, v, valid, SEED, rate, seg)
    ref = fa.reference(q, k, v, valid, SEED, rate, seg)
    assert out.shape == (B, L, N, K)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    grads = jax.grad(_loss(fa.attention, rate, valid, seg), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(_loss(fa.reference, rate, valid, seg), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", grads, want):
        np.testing.assert_allclose(g, w, atol=5e-6, rtol=1e-5, err_msg=f"d{name}")
    if lengths is not None:  # padded keys get no gradient
        assert float(jnp.abs(grads[1][1, 37:]).max()) == 0.0
        assert float(jnp.abs(grads[2][1, 37:]).max()) == 0.0


def test_dropout_changes_the_output_and_keeps_its_mean():
    """With dropout the output differs from no dropout; averaged over many keys it does not
    (kept weights are scaled by 1 / (1 - rate))."""
    q, k, v = _qkv(1, 512, 4, 16)
    q = q * 0  # uniform weights: the output is v's mean, dropout's noise averages out
    plain = fa.attention(q, k, v, None, SEED, 0.0)
    dropped = fa.attention(q, k, v, None, SEED, 0.1)
    assert float(jnp.abs(plain - dropped).max()) > 1e-2
    assert abs(float(dropped.mean() - plain.mean())) < 5e-3


def test_keep_mask_statistics():
    """Each weight keeps 16 bits of a hash shared with its neighbouring key: the masks still
    keep 1 - rate of the weights, independently of neighbours (the two halves included), of
    other (row, head)s and of another key."""
    ids = fa._ids(SEED, jnp.zeros(1, jnp.uint32), jnp.zeros(1, jnp.uint32))
    B, N, L = 4, 4, 256
    m = np.asarray(fa.keep_mask(ids, B, N, L, L, 0.1))
    assert abs(m.mean() - 0.9) < 0.003  # 1M draws: sd 0.0003
    for b in range(B):  # every (row, head) near 0.9, and each its own mask
        for n in range(N):
            assert abs(m[b, n].mean() - 0.9) < 0.01
    flat = m.reshape(B * N, -1)
    assert len({row.tobytes() for row in flat}) == B * N
    x = m.astype(np.float32) - m.mean()  # neighbours along keys and along queries uncorrelated
    for a, b in ((x[..., 1:], x[..., :-1]), (x[:, :, 1:], x[:, :, :-1]),
                 (x[..., 0::2], x[..., 1::2])):  # the last: the two halves of one hash
        assert abs((a * b).mean() / x.var()) < 0.01
    other = np.asarray(fa.keep_mask(fa._ids(SEED + 1, jnp.zeros(1, jnp.uint32),
                                            jnp.zeros(1, jnp.uint32)), B, N, L, L, 0.1))
    assert abs((m == other).mean() - (0.9 ** 2 + 0.1 ** 2)) < 0.003  # another key: independent
    np.testing.assert_array_equal(m, np.asarray(fa.keep_mask(ids, B, N, L, L, 0.1)))
    # an odd number of keys: the last pair's second half is cut, the rest is the same mask
    np.testing.assert_array_equal(np.asarray(fa.keep_mask(ids, B, N, L, L - 1, 0.1)),
                                  m[..., :L - 1])
    for rate in (0.1, 0.3, 1e-6):  # 16 bits a weight: the rate to within 2**-17
        assert abs(float(fa.threshold(rate)) / 2 ** 16 - rate) <= 2 ** -17


def test_the_same_masks_and_gradients_on_a_mesh():
    """Batch over data x fsdp and heads over tensor (8 devices): each device hashes the global
    rows and heads it holds, so output and gradients equal the single-device ones."""
    B, L, N, K = 4, 64, 4, 16
    q, k, v = _qkv(B, L, N, K)
    valid = jnp.arange(L)[None, :] < jnp.array([64, 50, 3, 64])[:, None]

    def run(q, k, v, valid):
        loss = _loss(fa.attention, 0.2, valid)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v), fa.attention(
            q, k, v, valid, SEED, 0.2)

    (l1, g1), o1 = jax.jit(run)(q, k, v, valid)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    xs = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    vs = NamedSharding(mesh, P(("data", "fsdp"), None))
    args = [jax.device_put(x, xs) for x in (q, k, v)] + [jax.device_put(valid, vs)]
    (l2, g2), o2 = jax.jit(run)(*args)
    assert o2.sharding.spec[0] == ("data", "fsdp") and o2.sharding.spec[2] == "tensor"
    np.testing.assert_allclose(o2, o1, atol=1e-6)
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_bfloat16_is_as_accurate_as_xla_in_bfloat16():
    """In bf16 the kernel's error (against float32) is no larger than XLA's bf16 attention's."""
    q32, k32, v32 = _qkv(2, 128, 2, 16)
    exact = fa.reference(q32, k32, v32, None, SEED, 0.1)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q32, k32, v32))
    ours = fa.attention(q, k, v, None, SEED, 0.1).astype(jnp.float32)
    xla = fa.reference(q, k, v, None, SEED, 0.1).astype(jnp.float32)
    err, err_xla = float(jnp.abs(ours - exact).max()), float(jnp.abs(xla - exact).max())
    assert err <= 1.5 * err_xla + 1e-3, (err, err_xla)


def test_bad_shapes_are_named():
    q, k, v = _qkv(1, 32, 1, 24)
    with pytest.raises(ValueError, match="power-of-two head dimension.*24"):
        fa.attention(q, k, v, None, SEED, 0.1)
    q, k, v = _qkv(1, 32, 1, 16)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        fa.attention(q, k, v, None, SEED, 1.0)


def test_padded_length():
    assert [fa.padded_length(n) for n in (1, 16, 17, 100, 128, 129, 384, 512)] == \
        [16, 16, 32, 128, 128, 256, 384, 512]


# --- the model's path --------------------------------------------------------------------------

def _tiny(**kw):
    kw = {"num_layers": 1, **kw}
    return M.RobertaConfig(vocab_size=300, hidden_size=32, num_heads=2, intermediate_size=64,
                           max_position_embeddings=130, **kw)


def _batch():
    ids = jax.random.randint(jax.random.key(1), (3, 64), 3, 300)
    am = (jnp.arange(64)[None] < jnp.array([64, 50, 17])[:, None]).astype(jnp.int32)
    return jnp.where(am == 1, ids, 1), am


def test_model_path_matches_xla_without_dropout():
    """Without dropout the model's output equals XLA's path: with padding, and with packed rows
    (segment ids, as DOC-SENTENCES and SENTENCE-PAIR+NSP feed them; padding after the second
    input of the last row), each input attending within itself."""
    ids, am = _batch()
    seg = jnp.where(jnp.arange(64)[None] < jnp.array([30, 64, 10])[:, None], 1, 2)
    seg = seg.at[2, 40:].set(0)
    params = M.RobertaForMaskedLM(_tiny()).init(jax.random.key(0), ids)["params"]
    for kw in (dict(attention_mask=am), dict(segment_ids=seg)):
        xla, ours = (M.RobertaForMaskedLM(_tiny(attention=a)).apply(
            {"params": params}, ids, deterministic=True, **kw) for a in ("xla", "pallas"))
        np.testing.assert_allclose(ours, xla, atol=2e-6)
    assert M.attention_implementation(_tiny(attention="pallas"), True) == "pallas"


def test_model_path_masks_follow_the_dropout_key():
    """Training: the same dropout key gives the same loss and gradients (so a resumed run draws
    the same masks), another key other masks."""
    ids, am = _batch()
    model = M.RobertaForMaskedLM(_tiny(attention="pallas"))
    params = model.init(jax.random.key(0), ids)["params"]

    def loss(p, key):
        out = model.apply({"params": p}, ids, attention_mask=am, deterministic=False,
                          rngs={"dropout": key})
        return out.astype(jnp.float32).std()

    step = jax.jit(jax.value_and_grad(loss))
    (l1, g1), (l2, g2), (l3, _) = (step(params, jax.random.key(s)) for s in (5, 5, 6))
    assert float(l1) == float(l2) and float(l1) != float(l3)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(a, b)
    # attention dropout is applied: without it (hidden dropout alone) the loss differs
    plain = M.RobertaForMaskedLM(_tiny(attention="pallas", attention_dropout_rate=0.0))
    l4 = plain.apply({"params": params}, ids, attention_mask=am, deterministic=False,
                     rngs={"dropout": jax.random.key(5)}).astype(jnp.float32).std()
    assert float(l4) != float(l1)


def test_recomputed_and_scanned_layers_draw_the_same_masks():
    """Rematerialized layers recompute attention, and a scanned layer loop runs one kernel call
    for every layer: the masks (and so loss and gradients) are those of the plain model."""
    variant = dict(remat="full", scan_unroll=1)
    ids, am = _batch()
    params = M.RobertaForMaskedLM(_tiny(num_layers=2)).init(jax.random.key(0), ids)["params"]

    def run(cfg):
        model = M.RobertaForMaskedLM(cfg)

        def loss(p):
            return model.apply({"params": p}, ids, attention_mask=am, deterministic=False,
                               rngs={"dropout": jax.random.key(3)}).astype(jnp.float32).std()
        return jax.jit(jax.value_and_grad(loss))(params)

    (l1, g1) = run(_tiny(attention="pallas", num_layers=2))
    (l2, g2) = run(_tiny(attention="pallas", num_layers=2, **variant))
    assert float(l2) == pytest.approx(float(l1), abs=1e-7)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_unknown_attention_is_named():
    with pytest.raises(ValueError, match="auto, xla, cudnn or pallas.*'flash'"):
        M.attention_implementation(dataclasses.replace(_tiny(), attention="flash"), False)
