"""robertax.features (and model.hidden_states) against transformers' output_hidden_states, and
the command line."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from robertax import checkpoint, convert, features
from robertax import model as M


@pytest.fixture(scope="module")
def hf_dir(random_hf_roberta, tmp_path_factory):
    """A random 3-layer transformers RobertaModel over RoBERTa's real BPE files."""
    return random_hf_roberta(tmp_path_factory.mktemp("hf"), num_layers=3, head=None)


TEXTS = ["The capital of France is Paris.", "Hello", "A longer text, with a few more words in it"
         " than the others have, so that the batch pads the short ones."]


def _reference(hf_dir, ids):
    model = transformers.RobertaModel.from_pretrained(hf_dir, add_pooling_layer=False).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return np.stack([h[0].numpy() for h in out.hidden_states])  # [layers + 1, T, D]


def test_features_equal_transformers_hidden_states(hf_dir):
    """Every layer's output (the embeddings' first), each text run by transformers alone and by
    robertax in one padded batch, and the last layer alone equal to the last of them."""
    ext = features.Features(str(hf_dir))
    every = ext.extract(TEXTS, all_layers=True, batch_size=8)
    last = ext.extract(TEXTS, batch_size=2)  # other batches, other padding
    for text, got, got_last in zip(TEXTS, every, last):
        ids = ext.tokenizer.encode(text)
        want = _reference(hf_dir, ids)
        assert got.shape == want.shape == (4, len(ids), 32), text
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=text)
        np.testing.assert_allclose(got_last, got[-1], rtol=1e-5, atol=1e-6, err_msg=text)
        assert np.abs(np.diff(got, axis=0)).min(axis=(1, 2)).max() > 0  # layers differ


@pytest.mark.parametrize("overrides", [{"scan_unroll": 1}, {"remat": "full"}])
def test_hidden_states_under_other_loops(overrides):
    """The scanned layer loop and rematerialized layers keep every layer's output too."""
    config = M.RobertaConfig.tiny(vocab_size=300, hidden_size=32, num_heads=2,
                                  intermediate_size=64, num_layers=3)
    params = M.init_params(M.RobertaForMaskedLM(config), jax.random.key(0))["encoder"]
    ids = jnp.array([[0, 5, 6, 7, 2, 1, 1], [0, 9, 2, 1, 1, 1, 1]])
    run = jax.jit(M.hidden_states, static_argnums=0)
    want = run(config, params, ids)
    got = run(config.replace(**overrides), params, ids)
    assert want.shape == (config.num_layers + 1, 2, 7, config.hidden_size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    last = jax.jit(M.Encoder(config).apply)({"params": params}, ids)
    np.testing.assert_array_equal(want[-1], last)


def test_cli_writes_npz_and_refuses_bad_input(hf_dir, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "f.npz"
    features.main(["--model", str(hf_dir), "--input", str(src), "--output", str(out),
                   "--all_layers", "--batch_size", "2"])
    z = np.load(out)
    ext = features.Features(str(hf_dir))
    ids = [ext.tokenizer.encode(t) for t in TEXTS]
    T = max(map(len, ids))
    assert z["features"].shape == (3, 4, T, 32) and z["input_ids"].shape == (3, T)
    assert z["lengths"].tolist() == [len(i) for i in ids]
    for n, i in enumerate(ids):
        assert z["input_ids"][n, :len(i)].tolist() == i
        assert (z["input_ids"][n, len(i):] == 1).all() and (z["features"][n, :, len(i):] == 0).all()
        np.testing.assert_allclose(z["features"][n, :, :len(i)], _reference(hf_dir, i),
                                   rtol=1e-4, atol=1e-5)
    # texts on the command line, the last layer
    features.main(["--model", str(hf_dir), "--output", str(out), "Hello", "Hello there"])
    assert np.load(out)["features"].shape == (2, 4, 32)
    # bad input names the file and line, or what is wrong
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\n\nafter a gap\n")
    with pytest.raises(SystemExit, match=r"error: .*bad.txt:2: empty line"):
        features.main(["--model", str(hf_dir), "--input", str(bad), "--output", str(out)])
    bad.write_text("fine\n" + " ".join(["word"] * 70) + "\n")
    with pytest.raises(SystemExit, match=r"error: .*bad.txt:2: 72 tokens .* model's 64"):
        features.main(["--model", str(hf_dir), "--input", str(bad), "--output", str(out)])
    with pytest.raises(SystemExit, match=r"error: give texts on the command line or --input"):
        features.main(["--model", str(hf_dir), "--output", str(out)])
    with pytest.raises(SystemExit, match=r"error: .*nowhere does not exist"):
        features.main(["--model", str(tmp_path / "nowhere"), "--output", str(out), "a"])


def test_fine_tuned_checkpoint_gives_its_encoder(hf_dir, tmp_path):
    """A robertax model dir without an MLM head (a fine-tuned model's shape) extracts too."""
    cfg, params = convert.from_hf(str(hf_dir))
    path = tmp_path / "classifier"
    checkpoint.save_model(str(path), cfg, {"encoder": params["encoder"]})
    (path / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_dir / name, path / "tokenizer" / name)
    got = features.Features(str(path)).extract(["Hello"])[0]
    want = features.Features(str(hf_dir)).extract(["Hello"])[0]
    np.testing.assert_array_equal(got, want)
