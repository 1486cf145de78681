"""The CPU's MKL route (`model.cpu_matmul="mkl"`): the custom call computes the same products,
the model the same loss and gradients as on XLA's route (the dense layer's and the tied head's
values and gradients: tests/test_model.py)."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robertax import mkl_gemm, model as M

if platform.machine() != "x86_64":  # requirements-dev.txt installs MKL on x86-64 only
    pytest.skip("Intel MKL is x86-64 only", allow_module_level=True)

f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731


def test_mkl_loads_here():
    """requirements-dev.txt installs MKL and the machine has a C++ compiler: the route works
    (so the tests below cannot pass by skipping)."""
    assert mkl_gemm.available() == (True, "")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
@pytest.mark.parametrize("M_,K,N", [(200, 33, 70), (70, 33, 260), (5, 7, 3)])
def test_gemm_computes_the_product(M_, K, N, trans_a, trans_b, dtype):
    """op(a) @ op(b) for every transposition, with C split by rows (M >= N), by columns, and
    not at all (small), in float32 and bf16 (float32 accumulation), under jit."""
    rng = np.random.default_rng(M_ + 2 * trans_a + trans_b)
    a = jnp.asarray(rng.normal(size=(K, M_) if trans_a else (M_, K)), dtype)
    b = jnp.asarray(rng.normal(size=(N, K) if trans_b else (K, N)), dtype)
    out = jax.jit(lambda a, b: mkl_gemm.gemm(a, b, trans_a, trans_b))(a, b)
    ref = (f32(a).T if trans_a else f32(a)).astype(np.float64) @ (f32(b).T if trans_b
                                                                  else f32(b))
    assert out.shape == (M_, N) and out.dtype == jnp.float32
    np.testing.assert_allclose(f32(out), ref, rtol=1e-5, atol=1e-4)


def test_gemm_under_vmap():
    a = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6, 5)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(3).normal(size=(3, 5, 4)), jnp.float32)
    out = jax.vmap(mkl_gemm.gemm)(a, b)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bmk,bkn->bmn", a, b), rtol=1e-5,
                               atol=1e-5)


def test_gemm_rejects_bad_operands():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="contracted sizes differ"):
        mkl_gemm.gemm(x, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="two float32 or two bfloat16"):
        mkl_gemm.gemm(x, jnp.ones((3, 2), jnp.bfloat16))
    with pytest.raises(ValueError, match="2-D"):
        mkl_gemm.gemm(jnp.ones((2, 4, 3)), jnp.ones((3, 2)))


def test_missing_mkl_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBERTAX_MKL_RT", str(tmp_path / "libmkl_rt.so.3"))
    with pytest.raises(FileNotFoundError, match="ROBERTAX_MKL_RT=.*no such file"):
        mkl_gemm.find_mkl()


def _loss_and_grads(config, params, ids):
    m = M.RobertaForMaskedLM(config)
    loss = lambda p: jax.nn.log_softmax(  # noqa: E731
        m.apply({"params": p}, ids).astype(jnp.float32))[..., 7].mean()
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("fused_qkv", [False, True])
def test_model_on_mkl_equals_model_on_xla(fused_qkv):
    """The same model, loss and every gradient, with its products on MKL or on XLA: float32
    equal to rounding; bf16 as close to float32 as XLA's route."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, num_layers=2, dropout_rate=0.0,
                                  attention_dropout_rate=0.0, fused_qkv=fused_qkv)
    params = M.init_params(M.RobertaForMaskedLM(config), jax.random.key(5))
    params = jax.tree.map(lambda p: p * 3, params)
    ids = jnp.asarray(np.random.default_rng(4).integers(4, 300, size=(3, 16)))
    run = lambda **kw: _loss_and_grads(config.replace(**kw), params, ids)  # noqa: E731

    (l_mkl, g_mkl), (l_xla, g_xla) = run(cpu_matmul="mkl"), run(cpu_matmul="xla")
    assert abs(float(l_mkl) - float(l_xla)) < 1e-5 * abs(float(l_xla))
    for a, b in zip(jax.tree.leaves(g_mkl), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    def error(ours):  # relative to float32 on XLA
        (la, ga) = ours
        num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(ga),
                                                                jax.tree.leaves(g_xla)))
        den = sum(float(jnp.sum(y ** 2)) for y in jax.tree.leaves(g_xla))
        return abs(float(la) - float(l_xla)), (num / den) ** 0.5

    bf_mkl = error(run(cpu_matmul="mkl", dtype=jnp.bfloat16))
    bf_xla = error(run(cpu_matmul="xla", dtype=jnp.bfloat16))
    assert 0 < bf_mkl[1] < 0.05
    assert bf_mkl[0] <= 1.5 * bf_xla[0] + 1e-3 and bf_mkl[1] <= 1.5 * bf_xla[1], (bf_mkl, bf_xla)


def test_cpu_matmul_is_checked():
    ids = jnp.ones((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="cpu_matmul must be xla or mkl, got 'blas'"):
        M.init_params(M.RobertaForMaskedLM(M.RobertaConfig.tiny(cpu_matmul="blas")),
                      jax.random.key(0))
    config = M.RobertaConfig.tiny(cpu_matmul="mkl", dtype=jnp.float16)
    params = M.init_params(M.RobertaForMaskedLM(M.RobertaConfig.tiny()), jax.random.key(0))
    with pytest.raises(ValueError, match="float32 or bfloat16, got model.dtype=float16"):
        M.RobertaForMaskedLM(config).apply({"params": params}, ids)
