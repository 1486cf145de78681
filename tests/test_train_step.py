"""The train step: sharding, gradient accumulation and float16 loss scaling change nothing they
should not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from robertax import optim, sharding, train


def small_config(**over):
    c = tiny.get_config()
    c.model.vocab_size = 250
    c.model.hidden_size = 32
    c.model.num_heads = 4
    c.model.intermediate_size = 64
    c.model.max_position_embeddings = 34
    c.model.dropout_rate = 0.0  # so that different batch splits see the same computation
    c.model.attention_dropout_rate = 0.0
    c.model.pad_vocab_to = 128
    c.data.max_length = 32
    c.data.max_predictions = 6
    c.optim.warmup_steps = 2
    c.optim.total_steps = 10
    c.batch_size = 8
    for k, v in over.items():
        parent = c
        *path, last = k.split(".")
        for p in path:
            parent = getattr(parent, p)
        setattr(parent, last, v)
    return c


def synthetic_batch(seed, B=8, L=32, P=6, V=250):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, size=(B, L)).astype(np.int32)
    lengths = rng.integers(L // 2, L + 1, size=B)
    seg = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(seg == 1, ids, 1)
    ids[:, 0] = 0
    pos = np.where(seg == 1, np.arange(L)[None] + 2, 1).astype(np.int32)
    mpos = np.stack([rng.choice(np.arange(1, n), P, replace=False) for n in lengths]).astype(np.int32)
    weights = np.ones((B, P), np.float32)
    weights[:, -1] = 0  # a padded prediction slot
    targets = rng.integers(5, V, size=(B, P)).astype(np.int32)
    return {"input_ids": ids, "segment_ids": seg, "position_ids": pos, "mlm_positions": mpos,
            "mlm_targets": targets, "mlm_weights": weights}


def setup(config, mesh):
    run = train.build(config, mesh, donate=False)
    return run.state, run.train_step


def run(config, mesh, steps=3):
    state, p_step = setup(config, mesh)
    losses = []
    for i in range(steps):
        batch = sharding.host_batch_to_global(mesh, synthetic_batch(i))
        state, m = p_step(state, batch, jax.random.key(1))
        losses.append(float(m["loss"]))
    return state, losses


def one_device_mesh():
    cfg = small_config().mesh
    cfg.data = 1
    return sharding.make_mesh(cfg, jax.devices()[:1])


def test_accumulating_microbatches_equals_one_batch():
    ref_state, ref = run(small_config(microbatches=1), one_device_mesh())
    acc_state, acc = run(small_config(microbatches=4), one_device_mesh())
    np.testing.assert_allclose(acc, ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


@pytest.mark.parametrize("data,fsdp,tensor", [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)])
def test_sharded_equals_single_device(data, fsdp, tensor):
    assert jax.device_count() == 8
    ref_state, ref = run(small_config(), one_device_mesh())
    cfg = small_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = data, fsdp, tensor
    mesh = sharding.make_mesh(cfg.mesh)
    state, got = run(cfg, mesh)
    # Same math, different reduction order across devices: float32 round-off only.
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    emb = state.params["encoder"]["embed"]["tokens"]["embedding"]
    if fsdp > 1 or tensor > 1:
        assert len(emb.sharding.device_set) == 8 and not emb.sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(emb), np.asarray(
        ref_state.params["encoder"]["embed"]["tokens"]["embedding"]), atol=1e-5)


@pytest.mark.parametrize("impl", ["threefry", "hash"])
def test_dropout_masks_do_not_depend_on_the_mesh(impl):
    """Counter-based generators hash each element's index, so every device draws its own part of
    the same masks: with dropout on, a 2 x 2 x 2 mesh trains as one device does."""
    def dropout_run(mesh_shape):
        cfg = small_config(dropout_rng=impl)
        cfg.model.dropout_rate = cfg.model.attention_dropout_rate = 0.1  # [B, N, L, S] masks too
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_shape
        mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:int(np.prod(mesh_shape))])
        state, p_step = setup(cfg, mesh)
        rng, losses = train.make_dropout_rng(cfg), []
        for i in range(2):
            state, m = p_step(state, sharding.host_batch_to_global(mesh, synthetic_batch(i)), rng)
            losses.append(float(m["loss"]))
        return losses

    ref, got = dropout_run((1, 1, 1)), dropout_run((2, 2, 2))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    cfg = small_config(dropout_rng=impl)
    without = run(cfg, one_device_mesh(), steps=2)[1]
    # the masks did change the computation, by far more than the mesh's round-off
    assert np.max(np.abs(np.subtract(ref, without))) > 1e-4, (ref, without)


def test_float16_overflow_skips_step_and_lowers_scale():
    config = small_config(precision="float16")
    mesh = one_device_mesh()
    state, p_step = setup(config, mesh)
    assert float(state.loss_scale.scale) == 2.0 ** 15
    batch = sharding.host_batch_to_global(mesh, synthetic_batch(0))
    before = jax.device_get(state.params)
    # Inject an overflow: a loss scale so large that the scaled gradients become inf.
    state = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.float32(3e38)))
    state, m = p_step(state, batch, jax.random.key(1))
    assert int(m["skipped"]) == 1 and int(state.skipped_steps) == 1
    assert float(state.loss_scale.scale) == pytest.approx(1.5e38)
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)  # parameters untouched
    # A sane scale trains normally afterwards.
    state = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.float32(1024.0)))
    state, m = p_step(state, batch, jax.random.key(1))
    assert int(m["skipped"]) == 0 and int(state.skipped_steps) == 1
    assert np.isfinite(float(m["loss"]))
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before))]
    assert all(changed)


def test_loss_scale_grows_after_period():
    s = optim.LossScale.create(True, initial=8.0, period=3)
    for _ in range(3):
        s = s.update(jnp.bool_(True))
    assert float(s.scale) == 16.0 and int(s.good_steps) == 0
    s = s.update(jnp.bool_(False))
    assert float(s.scale) == 8.0


def test_schedule_warmup_then_linear_decay():
    sched = optim.warmup_linear_decay(1e-3, warmup_steps=10, total_steps=110)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(60)) == pytest.approx(5e-4)
    assert float(sched(110)) == pytest.approx(0.0, abs=1e-12)


def test_decay_masks():
    params = {"encoder": {"layers": {"up": {"kernel": 1, "bias": 2}, "attn_norm": {"scale": 3}}},
              "mlm_head": {"bias": 4}}
    assert all(jax.tree.leaves(optim.decay_mask(params, "all")))
    m = optim.decay_mask(params, "no_bias_ln")
    assert m["encoder"]["layers"]["up"] == {"kernel": True, "bias": False}
    assert m["encoder"]["layers"]["attn_norm"]["scale"] is False
    assert m["mlm_head"]["bias"] is False
