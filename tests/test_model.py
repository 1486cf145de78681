"""The encoder computes what RoBERTa computes: parity with transformers' PyTorch RoBERTa."""

import contextlib
import io
import json
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from jax.ad_checkpoint import print_saved_residuals

from robertax import convert, cpu_attention, cpu_products, layers, model as M

CONFIGS = [  # odd vocabularies, 1-3 layers, different head counts
    dict(vocab_size=997, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
         intermediate_size=64, max_position_embeddings=40),
    dict(vocab_size=1234, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
         intermediate_size=80, max_position_embeddings=34),
    dict(vocab_size=515, hidden_size=64, num_hidden_layers=3, num_attention_heads=8,
         intermediate_size=128, max_position_embeddings=66),
]


def hf_config(**kw):
    return transformers.RobertaConfig(type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                      eos_token_id=2, layer_norm_eps=1e-5, **kw)


def scale_up(model, seed, std=0.25):
    """Random weights far from init, so GELU's form, eps and every bias matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if "LayerNorm.weight" in name
                                                                or "layer_norm.weight" in name
                                                                else 0.0))
    return model.eval()


def padded_batch(vocab, seed, B=3, L=16):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, vocab, size=(B, L))
    lengths = [L, L - 5, 3][:B]
    for b, n in enumerate(lengths):
        ids[b, 0] = 0
        ids[b, n - 1] = 2
        ids[b, n:] = 1
    mask = (ids != 1)
    return ids, mask


def max_diff_real(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask].max())


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_masked_lm_parity_and_roundtrip(i, tmp_path):
    torch.manual_seed(i)
    hf = scale_up(transformers.RobertaForMaskedLM(hf_config(**CONFIGS[i])), seed=i)
    hf.save_pretrained(tmp_path / "hf")
    config, params = convert.from_hf(str(tmp_path / "hf"))
    ids, mask = padded_batch(config.vocab_size, seed=i)
    with torch.no_grad():
        want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        # The same model in float64: the reference without float32 rounding. PyTorch's own
        # float32 logits depend on the CPU's kernels: on an AMD EPYC (2026-11-27) they were
        # 8.9e-6 from these (config 2) and robertax's 6.4e-6, so float32 against float32 could
        # reach 1.2e-5. A wrong LayerNorm eps (1e-12) moves the logits by 2.5e-4, tanh GELU by
        # 2.5e-3.
        exact = hf.double()(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = M.RobertaForMaskedLM(config).apply({"params": params}, jnp.asarray(ids))
    assert got.shape == want.shape
    assert np.abs(want[mask]).max() > 5.0  # the scaled weights give large activations
    assert max_diff_real(got, exact, mask) < 1e-5

    # robertax -> HF: transformers reloads it with the same logits.
    convert.to_hf(config, params, str(tmp_path / "back"))
    hf2 = transformers.RobertaForMaskedLM.from_pretrained(str(tmp_path / "back")).eval()
    with torch.no_grad():
        again = hf2(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert max_diff_real(again, want, mask) < 1e-5

    # HF -> robertax -> HF is bit-exact for every stored tensor.
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(
        tmp_path / "back" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_padded_vocab_matches_and_exports_sliced(tmp_path):
    hf = scale_up(transformers.RobertaForMaskedLM(hf_config(**CONFIGS[0])), seed=7)
    hf.save_pretrained(tmp_path / "hf")
    config, params = convert.from_hf(str(tmp_path / "hf"), pad_vocab_to=128)
    assert config.padded_vocab_size == 1024
    assert params["encoder"]["embed"]["tokens"]["embedding"].shape == (1024, 32)
    ids, mask = padded_batch(config.vocab_size, seed=3)
    with torch.no_grad():
        want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = M.RobertaForMaskedLM(config).apply({"params": params}, jnp.asarray(ids))
    assert got.shape[-1] == 997
    assert max_diff_real(got, want, mask) < 1e-5
    # The pretraining module masks the padded rows out of the softmax.
    out = M.RobertaForPretraining(config).apply({"params": params}, jnp.asarray(ids))
    assert out.mlm_logits.shape[-1] == 1024
    np.testing.assert_array_equal(np.asarray(out.mlm_logits[..., :997]), np.asarray(got))
    assert float(jax.nn.softmax(out.mlm_logits)[..., 997:].max()) == 0.0
    convert.to_hf(config, params, str(tmp_path / "back"))
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(
        tmp_path / "back" / "model.safetensors")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("num_labels", [3, 1])
def test_classification_parity(num_labels, tmp_path):
    hf = transformers.RobertaForSequenceClassification(
        hf_config(**CONFIGS[1], num_labels=num_labels))
    hf = scale_up(hf, seed=11)
    hf.save_pretrained(tmp_path / "hf")
    config, params = convert.from_hf(str(tmp_path / "hf"))
    ids, mask = padded_batch(config.vocab_size, seed=5)
    with torch.no_grad():
        want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = M.RobertaForSequenceClassification(config, num_labels).apply(
        {"params": params}, jnp.asarray(ids))
    assert got.shape == (3, num_labels)
    assert float(np.abs(np.asarray(got) - want).max()) < 1e-5
    convert.to_hf(config, params, str(tmp_path / "back"))
    hf2 = transformers.RobertaForSequenceClassification.from_pretrained(
        str(tmp_path / "back")).eval()
    with torch.no_grad():
        again = hf2(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert float(np.abs(again - want).max()) < 1e-5


@pytest.mark.parametrize("onehot", [True, False])
def test_gathered_head_equals_full_head(onehot):
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, pad_vocab_to=128, gather_onehot=onehot)
    module = M.RobertaForPretraining(config)
    params = M.init_params(module, jax.random.key(0))
    ids = jnp.asarray(padded_batch(300, seed=1)[0])
    full = module.apply({"params": params}, ids).mlm_logits
    pos = jnp.array([[1, 4, 7], [2, 3, 3], [1, 1, 1]])
    part = module.apply({"params": params}, ids, masked_positions=pos).mlm_logits
    np.testing.assert_allclose(np.asarray(part),
                               np.asarray(jnp.take_along_axis(full, pos[..., None], 1)),
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gather_positions_is_an_exact_gather(dtype):
    """The one-hot product picks rows exactly, and its backward adds the picked rows'
    gradients into place (twice where a position repeats), as take_along_axis's scatter does."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 11, 16)) * 1e3, dtype)  # large values: no rounding room
    pos = jnp.array([[1, 4, 10], [2, 3, 3], [0, 0, 0]])
    g = jnp.asarray(rng.normal(size=(3, 3, 16)), dtype)
    out, vjp = jax.vjp(lambda a: M.gather_positions(a, pos), x)
    # the reference in float32, rounded once: a repeated position's gradients are summed
    ref, ref_vjp = jax.vjp(lambda a: jnp.take_along_axis(a, pos[..., None], 1),
                           x.astype(jnp.float32))
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref))
    np.testing.assert_array_equal(
        np.asarray(vjp(g)[0], np.float32),
        np.asarray(ref_vjp(g.astype(jnp.float32))[0].astype(dtype), np.float32))


def test_packed_segments_equal_separate_inputs():
    """Two inputs packed in one row (segment ids, restarting positions) = each alone."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64)
    module = M.RobertaForMaskedLM(config)
    params = M.init_params(module, jax.random.key(1))
    a, b = [0, 10, 11, 12, 2], [0, 20, 21, 2]
    row = jnp.array([a + b + [1, 1, 1]])
    seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 3])
    pos = jnp.array([[2, 3, 4, 5, 6, 2, 3, 4, 5, 1, 1, 1]])
    packed = module.apply({"params": params}, row, position_ids=pos, segment_ids=seg)
    alone_a = module.apply({"params": params}, jnp.array([a]))
    alone_b = module.apply({"params": params}, jnp.array([b]))
    np.testing.assert_allclose(np.asarray(packed[0, :5]), np.asarray(alone_a[0]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(packed[0, 5:9]), np.asarray(alone_b[0]), atol=2e-5)


def test_dropout_is_active_only_in_training():
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64)
    module = M.RobertaForMaskedLM(config)
    params = M.init_params(module, jax.random.key(2))
    ids = jnp.asarray(padded_batch(300, seed=2)[0])
    eval1 = module.apply({"params": params}, ids)
    eval2 = module.apply({"params": params}, ids, deterministic=True)
    np.testing.assert_array_equal(np.asarray(eval1), np.asarray(eval2))
    train = module.apply({"params": params}, ids, deterministic=False,
                         rngs={"dropout": jax.random.key(3)})
    assert float(jnp.abs(train - eval1).max()) > 1e-3


@pytest.mark.parametrize("size", ["base", "large"])
def test_param_counts_equal_transformers(size):
    ours = getattr(M.RobertaConfig, size)()
    abstract = M.abstract_params(M.RobertaForMaskedLM(ours))  # no memory used
    with torch.device("meta"):
        hf = transformers.RobertaForMaskedLM(hf_config(
            vocab_size=ours.vocab_size, hidden_size=ours.hidden_size,
            num_hidden_layers=ours.num_layers, num_attention_heads=ours.num_heads,
            intermediate_size=ours.intermediate_size,
            max_position_embeddings=ours.max_position_embeddings))
    want = sum(p.numel() for p in hf.parameters())
    assert M.count_params(abstract) == want
    assert {"base": 124_697_433, "large": 355_412_057}[size] == want  # ~125M / ~355M
    # Rows that pad the vocabulary (50265 -> 50304) are not the checkpoint's parameters.
    padded = ours.replace(pad_vocab_to=128)
    abstract = M.abstract_params(M.RobertaForMaskedLM(padded))
    assert M.count_params(abstract) > want == M.count_params(abstract, padded)


def test_attention_selection_falls_back():
    cpu32 = M.RobertaConfig.tiny()
    assert M.attention_implementation(cpu32, dropout_active=False) == "xla"
    bf16 = M.RobertaConfig.tiny(dtype=jnp.bfloat16)
    expect = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert M.attention_implementation(bf16, dropout_active=False) == expect
    assert M.attention_implementation(bf16, dropout_active=True) == "xla"
    with pytest.raises(ValueError, match="attention dropout"):
        M.attention_implementation(M.RobertaConfig.tiny(attention="cudnn", dtype=jnp.bfloat16),
                                   dropout_active=True)
    with pytest.raises(ValueError, match="bfloat16"):
        M.attention_implementation(M.RobertaConfig.tiny(attention="cudnn"), dropout_active=False)


@pytest.mark.parametrize("cc, expect", [("9.0", "cudnn"), ("8.0", "cudnn"), ("7.5", "xla"),
                                        ("7.0", "xla"), (None, "cudnn"), ("gfx90a", "xla")])
def test_attention_selection_by_gpu_generation(cc, expect, monkeypatch):
    """On a GPU, "auto" takes cuDNN's flash attention from compute capability 8.0 (Ampere) on,
    and XLA's path on older cards (Colab's T4 is 7.5, a V100 7.0), where cuDNN has no flash
    kernel; a device that does not say (a compile-only one) keeps cuDNN. Asking for "cudnn" on
    an older card is a clear error."""
    class Device:
        device_kind = "Tesla T4"
    if cc is not None:
        Device.compute_capability = cc
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [Device()])
    bf16 = M.RobertaConfig.tiny(dtype=jnp.bfloat16)
    assert M.attention_implementation(bf16, dropout_active=False) == expect
    assert M.attention_implementation(bf16, dropout_active=True) == "xla"
    cudnn = M.RobertaConfig.tiny(attention="cudnn", dtype=jnp.float16)
    if expect == "cudnn":
        assert M.attention_implementation(cudnn, dropout_active=False) == "cudnn"
    else:
        with pytest.raises(ValueError, match=r"compute capability 8.0 or newer .*Tesla T4 has"):
            M.attention_implementation(cudnn, dropout_active=False)


@pytest.mark.parametrize("mkl", [False, True])
def test_tied_logits_backward_equals_autodiff(mkl):
    """The CPU head's hand-written backward computes the same gradients as autodiff, with
    XLA's products and with MKL's (tests/test_mkl_gemm.py)."""
    if mkl and platform.machine() != "x86_64":
        pytest.skip("Intel MKL is x86-64 only")
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(40, 16)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(40,)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 5, 40)), jnp.float32)
    plain = lambda h, t, b: (jax.nn.log_softmax(h @ t.T + b) * w).sum()
    ours = lambda h, t, b: (jax.nn.log_softmax(  # noqa: E731
        cpu_products.tied_logits(h, t, b, mkl)) * w).sum()
    np.testing.assert_allclose(float(ours(h, table, bias)), float(plain(h, table, bias)),
                               rtol=1e-6)
    for a, b in zip(jax.grad(ours, argnums=(0, 1, 2))(h, table, bias),
                    jax.grad(plain, argnums=(0, 1, 2))(h, table, bias)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("native_nt", [False, True])
@pytest.mark.parametrize("rows", [6, 40])
def test_tied_logits_bf16_routes(rows, native_nt, monkeypatch):
    """The bf16 head on XLA's products: with fewer rows than the width on a CPU where the
    table would be copied transposed (AMX), it takes table @ h.T and copies the smaller result
    instead; every route gives the float32 product rounded once, and the same gradients."""
    monkeypatch.setattr(cpu_products, "bf16_transposed_b_native", lambda: native_nt)
    rng = np.random.default_rng(2)
    r = lambda *s: jnp.asarray(rng.normal(size=s), jnp.bfloat16)  # noqa: E731
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    h, table, bias, g = r(2, rows // 2, 32), r(48, 32), r(48), r(2, rows // 2, 48)
    assert cpu_products._copies_table(h.reshape(-1, 32), False) == (rows < 32 and not native_nt)
    y, vjp = jax.vjp(lambda h, t, b: cpu_products.tied_logits(h, t, b), h, table, bias)
    dh, dt, db = vjp(g)
    assert y.shape == (2, rows // 2, 48) and y.dtype == jnp.bfloat16
    want = f32(f32(h) @ f32(table).T).astype(jnp.bfloat16)  # the product, rounded once
    np.testing.assert_allclose(f32(y), f32(want) + f32(bias), rtol=2 ** -7, atol=2e-2)
    g2, h2 = f32(g).reshape(rows, 48), f32(h).reshape(rows, 32)
    np.testing.assert_allclose(f32(dh).reshape(rows, 32), g2 @ f32(table), rtol=2 ** -8,
                               atol=1e-4)
    np.testing.assert_allclose(f32(dt), g2.T @ h2, rtol=2 ** -8, atol=1e-4)
    np.testing.assert_allclose(f32(db), g2.sum(0), rtol=2 ** -8, atol=1e-4)


@pytest.mark.parametrize("dtype,mkl,rows,native_nt", [
    (jnp.bfloat16, False, 24, False), (jnp.bfloat16, False, 24, True),
    (jnp.float32, False, 24, None), (jnp.float32, True, 150, None),
    (jnp.bfloat16, True, 150, None)])
def test_cpu_dense_accumulates_in_float32(dtype, mkl, rows, native_nt, monkeypatch):
    """On CPU a dense layer (forward and its three gradients) computes the float32 products and
    sums of its operands, rounded once to the compute dtype: with XLA's products in float32
    and in bf16 (the weight for the input gradient copied transposed or read in place, as
    `bf16_transposed_b_native` picks per CPU), and in float32 and bf16 with MKL's (150 rows:
    the product split over threads)."""
    if mkl and platform.machine() != "x86_64":
        pytest.skip("Intel MKL is x86-64 only")
    if native_nt is not None:
        monkeypatch.setattr(cpu_products, "bf16_transposed_b_native", lambda: native_nt)
    rng = np.random.default_rng(0)
    r = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    x, w, b, g = r(rows, 64), r(64, 40), r(40), r(rows, 40)
    y, vjp = jax.vjp(lambda x, w, b: cpu_products.dense(x, w, b, mkl), x, w, b)
    dx, dw, db = vjp(g)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2 ** -8  # bf16: one rounding
    for ours, ref in ((y, f32(x) @ f32(w) + f32(b)), (dx, f32(g) @ f32(w).T),
                      (dw, f32(x).T @ f32(g)), (db, f32(g).sum(0))):
        np.testing.assert_allclose(f32(ours), ref, rtol=tol, atol=1e-4)


@pytest.mark.parametrize("mkl", [False, True])
def test_cpu_dense_float32_weights_get_unrounded_gradients(mkl):
    """A bf16 dense layer with float32 parameters (the model's mixed precision) rounds them to
    bf16 for its products and returns their gradients in float32, not rounded to bf16."""
    if mkl and platform.machine() != "x86_64":
        pytest.skip("Intel MKL is x86-64 only")
    rng = np.random.default_rng(1)
    x, g = (jnp.asarray(rng.normal(size=(24, s)), jnp.bfloat16) for s in (64, 40))
    w, b = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((64, 40), (40,)))
    y, vjp = jax.vjp(lambda x, w, b: cpu_products.dense(x, w, b, mkl), x, w, b)
    dx, dw, db = vjp(g)
    assert y.dtype == dx.dtype == jnp.bfloat16 and dw.dtype == db.dtype == jnp.float32
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    w16 = f32(w.astype(jnp.bfloat16))
    np.testing.assert_allclose(f32(y), f32(x) @ w16 + f32(b), rtol=2 ** -8, atol=1e-4)
    np.testing.assert_allclose(f32(dx), f32(g) @ w16.T, rtol=2 ** -8, atol=1e-4)
    # exact bf16 products summed in float32: only the summation order differs
    np.testing.assert_allclose(f32(dw), f32(x).T @ f32(g), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f32(db), f32(g).sum(0), rtol=1e-6, atol=1e-6)
    assert np.abs(f32(dw) - f32(f32(dw).astype(jnp.bfloat16))).max() > 0  # not bf16 values


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
@pytest.mark.parametrize("dropout", [False, True])
def test_cpu_attention_is_attention(dropout, backend, monkeypatch, request):
    """cpu_attention's core (values and the three gradients) is softmax(q kᵀ/√K) v under a
    padding mask, with dropout on the weights where a keep mask is given: exact math in
    float32, within bf16 rounding in bf16. "gpu": traced as off the CPU (model.attention_vjp
    on a GPU), where the backward leaves its transposed operands to XLA."""
    if backend == "gpu":  # traces are cached per shape: clear them on the way in and out
        jax.clear_caches()
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        request.addfinalizer(jax.clear_caches)  # runs after monkeypatch's undo
    rng = np.random.default_rng(2)
    B, L, N, K = 3, 16, 2, 8
    q, k, v, g = (jnp.asarray(rng.normal(size=(B, L, N, K)) * 2, jnp.float32) for _ in range(4))
    mask = (jnp.arange(L)[None, :] < jnp.array([16, 11, 3])[:, None])[:, None, None, :]
    keep = jnp.asarray(rng.random((B, N, L, L)) > 0.1) if dropout else None
    rate = 0.1 if dropout else 0.0

    def reference(q, k, v):
        s = jnp.where(mask, jnp.einsum("BLNK,BSNK->BNLS", q, k) / math.sqrt(K), -1e30)
        p = jax.nn.softmax(s, axis=-1)
        p = p if keep is None else jnp.where(keep, p / (1 - rate), 0)
        return jnp.einsum("BNLS,BSNK->BLNK", p, v)

    want, want_vjp = jax.vjp(reference, q, k, v)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 4 * 2 ** -8)):
        cast = lambda a: a.astype(dtype)  # noqa: E731
        got, vjp = jax.vjp(lambda q, k, v: cpu_attention.attention(q, k, v, mask, keep, rate),
                           cast(q), cast(k), cast(v))
        assert got.dtype == dtype
        if dtype == jnp.bfloat16:  # the backward's transposed operands: copies on the CPU only
            program = str(jax.make_jaxpr(vjp)(cast(g)))
            swapped = program.count("transpose[permutation=(0, 2, 1)]")  # a plain swapaxes
            assert swapped == (2 if backend == "gpu" else 0), program
        for ours, ref in zip((got, *vjp(cast(g))), (want, *want_vjp(g))):
            err = float(jnp.abs(ours.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
            assert err < tol, (dtype, err)


def test_gelu_is_the_exact_erf_form():
    """GELU and its hand-written derivative against x/2 (1 + erf(x/sqrt 2)) in float64, to
    float32's precision; bf16 in, bf16 out."""
    x = np.linspace(-10, 10, 20001)
    erf = np.vectorize(math.erf)(x / math.sqrt(2))
    exact = 0.5 * x * (1 + erf)
    slope = 0.5 * (1 + erf) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    xf = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(np.asarray(layers.gelu(xf)), exact, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(layers.gelu))(xf)), slope, rtol=0,
                               atol=1e-6)
    xb = xf.astype(jnp.bfloat16)
    grad = jax.grad(lambda v: layers.gelu(v).sum())(xb)
    assert layers.gelu(xb).dtype == grad.dtype == jnp.bfloat16


def same_params(ours: nn.Module, ref: nn.Module, x):
    """Both modules' initial parameters (same key): the same tree, values and axis names.
    Returns ours (boxed)."""
    p_ours, p_ref = ours.init(jax.random.key(2), x), ref.init(jax.random.key(2), x)
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_ref)
    boxed = lambda v: isinstance(v, nn.Partitioned)  # noqa: E731
    for a, b in zip(jax.tree.leaves(p_ours, is_leaf=boxed), jax.tree.leaves(p_ref, is_leaf=boxed)):
        assert a.names == b.names
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    return p_ours


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_vjp_is_layer_norm(dtype):
    """model.layer_norm_vjp: the LayerNorm with a hand-written backward has nn.LayerNorm's
    parameters (values, shapes, axis names), output and gradients (input, scale, bias), and
    keeps only its input (and per-row statistics) for its backward, where autodiff through
    nn.LayerNorm keeps three float32 arrays of the input's size."""
    config = M.RobertaConfig.tiny(dtype=dtype, layer_norm_vjp=True)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(1.5, 2.0, size=(2, 5, 24)), dtype)  # rows with mean and spread
    ours = layers.layer_norm(config, "norm")
    ref = layers.layer_norm(config.replace(layer_norm_vjp=False), "norm")
    assert isinstance(ours, layers.LayerNorm) and isinstance(ref, nn.LayerNorm)
    params = nn.unbox(same_params(ours, ref, x))
    params = {"params": {"scale": params["params"]["scale"] + jnp.linspace(-0.5, 0.5, 24),
                         "bias": params["params"]["bias"] + 0.3}}
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def run(m):
        y, vjp = jax.vjp(lambda p, x: m.apply(p, x), params, x)
        dp, dx = vjp(g.astype(y.dtype))
        return y, dx, dp["params"]["scale"], dp["params"]["bias"]

    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    (y, dx, ds, db), (y_ref, dx_ref, ds_ref, db_ref) = run(ours), run(ref)
    assert y.dtype == dx.dtype == dtype and ds.dtype == db.dtype == jnp.float32
    tol = 1e-5 if dtype == jnp.float32 else 2 ** -7  # bf16: each rounds once, differently
    for a, b in ((y, y_ref), (dx, dx_ref), (ds, ds_ref), (db, db_ref)):
        np.testing.assert_allclose(f32(a), f32(b), rtol=tol, atol=tol * np.abs(f32(b)).max())
    xf = x.astype(jnp.float32) + 1e-3 * g  # a float32 input (the embeddings' sum) as it comes
    y, y_ref = ours.apply(params, xf), ref.apply(params, xf)
    assert y.dtype == y_ref.dtype == dtype
    np.testing.assert_allclose(f32(y), f32(y_ref), rtol=tol, atol=tol * np.abs(f32(y_ref)).max())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # one line per residual: "f32[2,5,1] output of ..."
        print_saved_residuals(lambda p, x: ours.apply(p, x).sum(), params, x)
    full = [line for line in out.getvalue().splitlines() if "[2,5,24]" in line]
    short = {jnp.float32: "f32", jnp.bfloat16: "bf16"}[dtype]
    assert full == [f"{short}[2,5,24] from the argument x"], out.getvalue()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_is_dense_general(dtype, monkeypatch):
    """Dense has nn.DenseGeneral's parameters (values, shapes, axis names) and outputs, also
    contracting two axes (the attention output projection) and in bf16 on CPU; off the CPU
    bf16 path it is DenseGeneral's very program."""
    config = M.RobertaConfig.tiny(dtype=dtype)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 3, 8)), jnp.float32)
    names = ("heads", "kv", "embed")
    ours = layers.Dense(config, 16, names, axis=(-2, -1))
    ref = nn.DenseGeneral(16, axis=(-2, -1), dtype=dtype,
                          kernel_init=layers.normal_init(config, names),
                          bias_init=layers.zeros_init(names[-1:]))
    params = jax.tree.map(lambda v: v + 0.1, nn.unbox(same_params(ours, ref, x)))  # bias != 0
    out, out_ref = ours.apply(params, x), ref.apply(params, x)
    assert out.shape == (2, 5, 16) and out.dtype == out_ref.dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 2 ** -7
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(out_ref, np.float32),
                               rtol=tol, atol=tol)
    monkeypatch.setattr(layers, "cpu_dense", lambda config: None)  # the path GPUs take
    program = lambda m: jax.jit(jax.grad(  # noqa: E731
        lambda p: m.apply(p, x).astype(jnp.float32).sum())).lower(params).as_text(
            debug_info=False)
    assert program(ours) == program(ref)


def test_cpu_bf16_fast_path_is_as_accurate_as_xlas(monkeypatch):
    """The bf16 model on CPU (dense layers through cpu_products.dense, attention through
    cpu_attention) is as close to the float32 model, loss and gradients, as with XLA's own bf16
    products and jax.nn.dot_product_attention. The float32 model's dense layers also run
    through cpu_products.dense on the CPU: the same loss and gradients as XLA's plain layers."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, num_layers=2, dropout_rate=0.0,
                                  attention_dropout_rate=0.0)
    assert layers.cpu_dense(config.replace(dtype=jnp.bfloat16)) is False
    assert layers.cpu_dense(config) is False  # float32
    assert layers.cpu_dense(config.replace(dtype=jnp.float16)) is None
    assert M._attention_core(config.replace(dtype=jnp.bfloat16))
    assert not M._attention_core(config) and M._attention_core(config.replace(attention_vjp=True))
    assert not M._attention_core(config.replace(attention_vjp=True, dtype=jnp.float16))
    params = M.init_params(M.RobertaForMaskedLM(config), jax.random.key(5))
    params = jax.tree.map(lambda p: p * 3, params)  # larger activations: larger rounding
    ids = jnp.asarray(padded_batch(300, seed=4)[0])

    def value_and_grads(dtype):
        m = M.RobertaForMaskedLM(config.replace(dtype=dtype))
        loss = lambda p: jax.nn.log_softmax(  # noqa: E731
            m.apply({"params": p}, ids).astype(jnp.float32))[..., 7].mean()
        return jax.jit(jax.value_and_grad(loss))(params)

    def error(a, b):
        (la, ga), (lb, gb) = a, b
        num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(ga),
                                                                jax.tree.leaves(gb)))
        den = sum(float(jnp.sum(y ** 2)) for y in jax.tree.leaves(gb))
        return abs(float(la) - float(lb)), (num / den) ** 0.5

    reference = value_and_grads(jnp.float32)
    ours = error(value_and_grads(jnp.bfloat16), reference)
    monkeypatch.setattr(layers, "cpu_dense", lambda config: None)
    monkeypatch.setattr(M, "_attention_core", lambda config: False)
    xlas = error(value_and_grads(jnp.bfloat16), reference)
    plain_f32 = error(value_and_grads(jnp.float32), reference)
    assert plain_f32[0] < 1e-5 and plain_f32[1] < 1e-5, plain_f32
    assert 0 < ours[1] < 0.05
    assert ours[0] <= 1.5 * xlas[0] + 1e-3 and ours[1] <= 1.5 * xlas[1], (ours, xlas)


@pytest.mark.parametrize("unroll", [2, 3, 0])
def test_unrolled_layer_scan_is_the_same_model(unroll):
    """scan_unroll changes how the layer loop compiles, not the parameters or the math."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, num_layers=3, scan_unroll=1)
    scanned = M.RobertaForMaskedLM(config)
    unrolled = M.RobertaForMaskedLM(config.replace(scan_unroll=unroll))
    params = M.init_params(scanned, jax.random.key(4))
    assert jax.tree.structure(M.init_params(unrolled, jax.random.key(4))) == \
        jax.tree.structure(params)
    ids = jnp.asarray(padded_batch(300, seed=3)[0])
    loss = lambda m: lambda p: (m.apply({"params": p}, ids) ** 2).mean()  # noqa: E731
    (la, ga), (lb, gb) = (jax.jit(jax.value_and_grad(loss(m)))(params)
                          for m in (scanned, unrolled))
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("switch", ["fused_qkv", "layer_norm_vjp", "attention_vjp",
                                    "fold_attention_biases", "fused_norm"])
def test_speed_switch_is_the_same_model(switch):
    """fused_qkv changes how Q, K, V are computed (one matrix product), layer_norm_vjp how
    LayerNorm's backward is, attention_vjp how attention's core is (cpu_attention in float32),
    fold_attention_biases where the key and value biases act (nowhere and in the output
    projection's bias), fused_norm where the residual add and LayerNorm run (one kernel);
    none changes the parameters (same names, shapes and initial values) or the math."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, num_layers=2)
    plain, fused = (M.RobertaForMaskedLM(config.replace(**{switch: f})) for f in (False, True))
    params = M.init_params(plain, jax.random.key(5))
    fused_init = M.init_params(fused, jax.random.key(5))
    assert jax.tree.structure(fused_init) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(fused_init), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    params = jax.tree.map(lambda p: p * 5.0 if p.ndim >= 2 else p + 0.1, params)  # far from init
    ids = jnp.asarray(padded_batch(300, seed=6)[0])
    loss = lambda m: lambda p: (m.apply({"params": p}, ids) ** 2).mean()  # noqa: E731
    (la, ga), (lb, gb) = (jax.jit(jax.value_and_grad(loss(m)))(params) for m in (plain, fused))
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-5)
    for g in (ga, gb):  # the gradient reaches the fused projections and the norms
        assert float(jnp.abs(g["encoder"]["layers"]["attn"]["query"]["kernel"]).max()) > 0
        assert float(jnp.abs(g["encoder"]["layers"]["mlp_norm"]["scale"]).max()) > 0
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_fold_attention_biases_where_it_applies():
    """model.fold_attention_biases: the key bias's gradient is exactly zero (softmax ignores
    it) and the value bias's reaches it through the output projection; in bf16 (the CPU's
    own attention core) the outputs match the plain model's to bf16 rounding; with attention
    dropout in training the fold is off (the weights no longer sum to one), so the step is
    bit-identical; it refuses fused_qkv."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, num_layers=2)
    params = M.init_params(M.RobertaForMaskedLM(config), jax.random.key(5))
    params = jax.tree.map(lambda p: p * 5.0 if p.ndim >= 2 else p + 0.1, params)
    attn = lambda g: g["encoder"]["layers"]["attn"]  # noqa: E731
    for i, name in enumerate(("key", "value")):  # biases that differ by head and feature
        attn(params)[name]["bias"] = jax.random.normal(jax.random.key(i), (2, 2, 16))
    ids = jnp.asarray(padded_batch(300, seed=6)[0])

    def run(c, **kw):
        m = M.RobertaForMaskedLM(c)
        return jax.jit(jax.value_and_grad(
            lambda p: (m.apply({"params": p}, ids, **kw) ** 2).mean()))(params)

    (lp, gp), (lf, gf) = (run(config.replace(fold_attention_biases=f)) for f in (False, True))
    np.testing.assert_allclose(float(lf), float(lp), rtol=1e-5)
    assert float(jnp.abs(attn(gf)["key"]["bias"]).max()) == 0.0
    assert float(jnp.abs(attn(gp)["key"]["bias"]).max()) < 1e-6  # zero up to rounding
    assert float(jnp.abs(attn(gf)["value"]["bias"]).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(attn(gf)["value"]["bias"]),
                               np.asarray(attn(gp)["value"]["bias"]), rtol=1e-4, atol=1e-6)
    want = M.RobertaForMaskedLM(config).apply({"params": params}, ids)  # float32
    bf16 = config.replace(dtype=jnp.bfloat16)
    plain, folded = (float(jnp.abs(M.RobertaForMaskedLM(bf16.replace(
        fold_attention_biases=f)).apply({"params": params}, ids).astype(jnp.float32)
        - want).max()) for f in (False, True))
    assert 0 < folded < 2 * plain  # about as accurate in bf16 as the plain model
    kw = dict(deterministic=False, rngs={"dropout": jax.random.key(3)})
    dropped = config.replace(attention_dropout_rate=0.1)
    (lp, gp), (lf, gf) = (run(dropped.replace(fold_attention_biases=f), **kw)
                          for f in (False, True))
    assert float(lp) == float(lf)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gf)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="fused_qkv"):
        run(config.replace(fold_attention_biases=True, fused_qkv=True))


def test_tanh_gelu_matches_transformers_and_round_trips(tmp_path):
    """gelu_approximate (a speed knob) is transformers' gelu_pytorch_tanh, both ways."""
    hf = scale_up(transformers.RobertaForMaskedLM(hf_config(**CONFIGS[0],
                                                            hidden_act="gelu_pytorch_tanh")), 9)
    hf.save_pretrained(tmp_path / "hf")
    config, params = convert.from_hf(str(tmp_path / "hf"))
    assert config.gelu_approximate
    ids, mask = padded_batch(config.vocab_size, seed=9)
    with torch.no_grad():
        want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = M.RobertaForMaskedLM(config).apply({"params": params}, jnp.asarray(ids))
    assert max_diff_real(got, want, mask) < 1e-5
    exact = M.RobertaForMaskedLM(config.replace(gelu_approximate=False)).apply(
        {"params": params}, jnp.asarray(ids))
    assert max_diff_real(exact, want, mask) > 1e-3  # the form matters at these weights
    convert.to_hf(config, params, str(tmp_path / "back"))
    assert json.loads((tmp_path / "back" / "config.json").read_text())["hidden_act"] == \
        "gelu_pytorch_tanh"
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        convert.hf_config_to_ours({"model_type": "roberta", "hidden_act": "relu"}, "cfg.json")
    from robertax import fairseq
    with pytest.raises(ValueError, match="gelu_approximate"):
        fairseq.to_fairseq(config, params, str(tmp_path / "fs"))
