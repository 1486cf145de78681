"""fairseq interoperability: RoBERTa checkpoints in both key layouts, safe unpickling, and
fairseq-binarized corpora (MMIDIDX .bin/.idx) that convert to shards and train.

The fairseq checkpoints are built here from random transformers models through the documented
key mapping (`fairseq_state`, written independently of robertax's table: it is the oracle).
"""

import argparse
import collections
import logging
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from robertax import convert, fairseq, model as M
from robertax.data import fairseq_corpus as fc, shards
from test_model import hf_config, padded_batch, scale_up

SIZES = dict(vocab_size=203, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
             intermediate_size=80, max_position_embeddings=34)  # max_positions 32 in fairseq


# --- the oracle: Hugging Face names -> fairseq names ----------------------------------------

def fairseq_state(mlm: dict, cls: dict | None, layers: int, layout: str, head="mnli"):
    """A fairseq RoBERTa state dict from transformers' state dicts. `layout`: "released" (2019:
    decoder.*, fused in_proj q;k;v, emb_layer_norm) or "newer" (encoder.*, split q/k/v,
    layernorm_embedding, a version buffer)."""
    released = layout == "released"
    top = "decoder" if released else "encoder"
    enc, lm = f"{top}.sentence_encoder", f"{top}.lm_head"
    eln = "emb_layer_norm" if released else "layernorm_embedding"
    e = "roberta.embeddings."
    out = collections.OrderedDict()
    out[f"{enc}.embed_tokens.weight"] = mlm[e + "word_embeddings.weight"].clone()
    out[f"{enc}.embed_positions.weight"] = mlm[e + "position_embeddings.weight"].clone()
    for i in range(layers):
        h, f = f"roberta.encoder.layer.{i}.", f"{enc}.layers.{i}."
        for wb in ("weight", "bias"):
            q, k, v = (mlm[f"{h}attention.self.{n}.{wb}"] for n in ("query", "key", "value"))
            if released:
                out[f"{f}self_attn.in_proj_{wb}"] = torch.cat([q, k, v]).clone()
            else:
                for p, t in zip("kvq", (k, v, q)):
                    out[f"{f}self_attn.{p}_proj.{wb}"] = t.clone()
            for theirs, ours in (("attention.output.dense", "self_attn.out_proj"),
                                 ("attention.output.LayerNorm", "self_attn_layer_norm"),
                                 ("intermediate.dense", "fc1"), ("output.dense", "fc2"),
                                 ("output.LayerNorm", "final_layer_norm")):
                out[f"{f}{ours}.{wb}"] = mlm[f"{h}{theirs}.{wb}"].clone()
    for wb in ("weight", "bias"):
        out[f"{enc}.{eln}.{wb}"] = mlm[f"{e}LayerNorm.{wb}"].clone()
    if not released:
        out[f"{enc}.version"] = torch.tensor([3.0])
    out[f"{lm}.weight"] = out[f"{enc}.embed_tokens.weight"]  # tied, as fairseq saves it
    out[f"{lm}.bias"] = mlm["lm_head.bias"].clone()
    for wb in ("weight", "bias"):
        out[f"{lm}.dense.{wb}"] = mlm[f"lm_head.dense.{wb}"].clone()
        out[f"{lm}.layer_norm.{wb}"] = mlm[f"lm_head.layer_norm.{wb}"].clone()
        if cls is not None:
            for part in ("dense", "out_proj"):
                out[f"classification_heads.{head}.{part}.{wb}"] = \
                    cls[f"classifier.{part}.{wb}"].clone()
    return out


def arch_fields():
    return dict(encoder_layers=2, encoder_embed_dim=48, encoder_ffn_embed_dim=80,
                encoder_attention_heads=3, max_positions=32, dropout=0.1, attention_dropout=0.1,
                activation_fn="gelu", pooler_activation_fn="tanh")


def save_checkpoint(state, path, layout, model_args=None):
    """As fairseq writes them: the 2019 release in torch's legacy format with `args`; newer
    files zipped, with a plain-dict `cfg`. numpy scalars in the training state, as real ones."""
    ckpt = {"model": state,
            "optimizer_history": [{"criterion_name": "MaskedLmLoss",
                                   "optimizer_name": "MemoryEfficientFP16Optimizer",
                                   "lr_scheduler_state": {"best": np.float64(1.83)},
                                   "num_updates": 500000}],
            "extra_state": {"train_iterator": {"epoch": 3, "iterations_in_epoch": 0},
                            "val_loss": np.float64(1.9)},
            "last_optimizer_state": None}
    fields = model_args or arch_fields()
    if layout == "released":
        ckpt["args"] = argparse.Namespace(arch="roberta_base", task="masked_lm", **fields)
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    else:
        ckpt["args"] = None
        ckpt["cfg"] = {"_name": None, "common": {"fp16": True, "seed": 1},
                       "model": {"_name": "roberta", **fields},
                       "task": {"_name": "masked_lm", "tokens_per_sample": 32}}
        torch.save(ckpt, path)


def write_dict(path, vocab_size):
    with open(path, "w") as f:
        f.writelines(f"{1000 + i} {5000 - i}\n" for i in range(vocab_size - 5))


@pytest.fixture(scope="module")
def models():
    """A masked-LM and a classifier (3 labels) sharing one random encoder, no token types."""
    torch.manual_seed(0)
    mlm = scale_up(transformers.RobertaForMaskedLM(hf_config(**SIZES)), seed=3)
    with torch.no_grad():
        mlm.roberta.embeddings.token_type_embeddings.weight.zero_()  # fairseq has none
    cls = transformers.RobertaForSequenceClassification(hf_config(**SIZES, num_labels=3))
    scale_up(cls, seed=4)
    cls.roberta.load_state_dict(mlm.roberta.state_dict(), strict=False)
    return mlm.eval(), cls.eval()


def fairseq_dir(tmp_path, models, layout, name="fs"):
    mlm, cls = models
    folder = tmp_path / name
    folder.mkdir()
    state = fairseq_state(mlm.state_dict(), cls.state_dict(), 2, layout)
    save_checkpoint(state, folder / "model.pt", layout)
    write_dict(folder / "dict.txt", SIZES["vocab_size"])
    return folder


def logits(config, params, ids):
    mlm = M.RobertaForMaskedLM(config).apply({"params": params}, jnp.asarray(ids))
    cls = M.RobertaForSequenceClassification(config, 3).apply(
        {"params": params}, jnp.asarray(ids)) if "classifier" in params else None
    return np.asarray(mlm), None if cls is None else np.asarray(cls)


def hf_logits(mlm, cls, ids, mask):
    with torch.no_grad():
        a = mlm(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        b = cls(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy() \
            if cls is not None else None
    return a, b


# --- checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["released", "newer"])
def test_fairseq_checkpoint_matches_transformers(layout, models, tmp_path):
    folder = fairseq_dir(tmp_path, models, layout)
    config, params = fairseq.from_fairseq(str(folder))
    assert (config.vocab_size, config.num_layers, config.num_heads,
            config.max_position_embeddings) == (203, 2, 3, 34)  # 32 positions + pad + 1
    assert not params["encoder"]["embed"]["types"]["embedding"].any()
    ids, mask = padded_batch(config.vocab_size, seed=1)
    want_mlm, want_cls = hf_logits(*models, ids, mask)
    got_mlm, got_cls = logits(config, params, ids)
    assert np.abs(want_mlm[mask]).max() > 5.0
    assert np.abs(got_mlm - want_mlm)[mask].max() < 1e-5
    assert np.abs(got_cls - want_cls).max() < 1e-5

    # fairseq -> hf: transformers loads it with the same logits.
    convert.to_hf(config, params, str(tmp_path / "hf"))
    hf_mlm = transformers.RobertaForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    hf_cls = transformers.RobertaForSequenceClassification.from_pretrained(
        str(tmp_path / "hf")).eval()
    again_mlm, again_cls = hf_logits(hf_mlm, hf_cls, ids, mask)
    assert np.abs(again_mlm - want_mlm)[mask].max() < 1e-5
    assert np.abs(again_cls - want_cls).max() < 1e-5


def load_plain(path):
    with torch.serialization.safe_globals(fairseq._safe_globals()):  # pylint: disable=W0212
        return torch.load(path, weights_only=True)


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_cli_fairseq_to_robertax_to_fairseq_is_exact(models, tmp_path, capsys):
    folder = fairseq_dir(tmp_path, models, "released")
    convert.main([f"--src={folder}", f"--dst={tmp_path / 'ours'}"])  # the CLI, in-process
    out = capsys.readouterr().out
    assert "(fairseq) ->" in out and "(robertax)" in out and "'classifier'" in out
    convert.main([f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'back'}",
                  "--dst_format=fairseq", "--fairseq_head=mnli"])
    a, b = load_plain(folder / "model.pt"), load_plain(tmp_path / "back" / "model.pt")
    assert_same_tensors(a["model"], b["model"])  # every tensor, bit for bit
    # the dictionary travelled with the model, byte for byte
    assert (tmp_path / "back" / "dict.txt").read_bytes() == (folder / "dict.txt").read_bytes()
    args = b["args"]
    assert isinstance(args, argparse.Namespace)
    assert (args.encoder_layers, args.encoder_embed_dim, args.encoder_ffn_embed_dim,
            args.encoder_attention_heads, args.max_positions) == (2, 48, 80, 3, 32)
    # and our reader reads the written file back to the same parameters
    c1, p1 = fairseq.from_fairseq(str(folder))
    c2, p2 = fairseq.from_fairseq(str(tmp_path / "back"))
    assert c1 == c2
    for x, y in zip(__import__("jax").tree.leaves(p1), __import__("jax").tree.leaves(p2)):
        assert np.array_equal(x, y)


def test_newer_layout_writes_as_the_released_one(models, tmp_path):
    newer = fairseq_dir(tmp_path, models, "newer", "newer")
    released = fairseq_dir(tmp_path, models, "released", "released")
    config, params = fairseq.from_fairseq(str(newer))
    fairseq.to_fairseq(config, params, str(tmp_path / "out"), head="mnli",
                       dictionary=str(newer / "dict.txt"))
    assert_same_tensors(load_plain(released / "model.pt")["model"],
                        load_plain(tmp_path / "out" / "model.pt")["model"])


def test_hf_to_fairseq_without_dict_writes_placeholder_and_folds_token_types(tmp_path, caplog):
    torch.manual_seed(5)
    hf = scale_up(transformers.RobertaForMaskedLM(hf_config(**SIZES)), seed=5)  # type row != 0
    hf.save_pretrained(tmp_path / "hf")
    config, params = convert.from_hf(str(tmp_path / "hf"))
    with caplog.at_level(logging.INFO):
        convert.write(config, params, str(tmp_path / "fs"), "fairseq")
    assert "placeholder" in caplog.text and "folded the token-type" in caplog.text
    lines = (tmp_path / "fs" / "dict.txt").read_text().splitlines()
    assert len(lines) == 203 - 5 and lines[0] == "madeupword0000 0"
    assert fairseq.dictionary_vocab_size(str(tmp_path / "fs" / "dict.txt")) == 203
    config2, params2 = convert.read(str(tmp_path / "fs"))  # format detected from model.pt
    ids, mask = padded_batch(203, seed=2)
    want, _ = hf_logits(hf, None, ids, mask)
    got, _ = logits(config2, params2, ids)
    # Folding the type row into the positions reassociates one float addition: logits of
    # magnitude ~50 then differ in the last bits, not within 1e-5 absolute.
    assert np.abs(want[mask]).max() > 5.0
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-6, atol=5e-5)


def test_existing_dictionary_is_never_overwritten(models, tmp_path, caplog):
    folder = fairseq_dir(tmp_path, models, "released")
    config, params = fairseq.from_fairseq(str(folder))
    out = tmp_path / "out"
    out.mkdir()
    write_dict(out / "dict.txt", SIZES["vocab_size"])  # the model's real dictionary
    real = (out / "dict.txt").read_bytes()
    with caplog.at_level(logging.INFO):
        fairseq.to_fairseq(config, params, str(out))  # no source dictionary
    assert (out / "dict.txt").read_bytes() == real and "kept the dictionary" in caplog.text
    assert "placeholder" not in caplog.text and (out / "model.pt").is_file()
    # One that does not fit the model is not this model's: refused, nothing written.
    (tmp_path / "other").mkdir()
    write_dict(tmp_path / "other" / "dict.txt", 100)
    other = (tmp_path / "other" / "dict.txt").read_bytes()
    with pytest.raises(ValueError, match=r"other/dict\.txt has 95 entries.*model's is 203.*not "
                                         r"overwritten"):
        fairseq.to_fairseq(config, params, str(tmp_path / "other"))
    assert (tmp_path / "other" / "dict.txt").read_bytes() == other
    assert not (tmp_path / "other" / "model.pt").exists()
    # Nor is it replaced by a different dictionary travelling with the model.
    (tmp_path / "third.txt").write_text("".join(f"{9000 + i} 1\n"
                                                for i in range(SIZES["vocab_size"] - 5)))
    with pytest.raises(ValueError, match=r"out/dict\.txt already exists and differs"):
        fairseq.to_fairseq(config, params, str(out), dictionary=str(tmp_path / "third.txt"))
    with pytest.raises(ValueError, match=r"out/dict\.txt already exists and differs"):
        convert.write(config, params, str(out), "hf", dictionary=str(tmp_path / "third.txt"))
    assert (out / "dict.txt").read_bytes() == real and not (out / "config.json").exists()


def test_fairseq_to_fairseq_keeps_the_head_name(models, tmp_path):
    """No --fairseq_head and no --dst_format: a .pt destination is fairseq, and the head keeps
    its name (mnli), directly and through a robertax dir."""
    folder = fairseq_dir(tmp_path, models, "released")
    convert.main([f"--src={folder}", f"--dst={tmp_path / 'direct' / 'model.pt'}"])
    assert_same_tensors(load_plain(folder / "model.pt")["model"],
                        load_plain(tmp_path / "direct" / "model.pt")["model"])
    convert.main([f"--src={folder}", f"--dst={tmp_path / 'ours'}"])
    convert.main([f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'back'}",
                  "--dst_format=fairseq"])
    names = load_plain(tmp_path / "back" / "model.pt")["model"]
    assert "classification_heads.mnli.out_proj.weight" in names


def test_several_heads_need_a_choice_and_bad_args_are_named(models, tmp_path):
    mlm, cls = models
    state = fairseq_state(mlm.state_dict(), cls.state_dict(), 2, "released")
    for k in [k for k in state if k.startswith("classification_heads.mnli.")]:
        state[k.replace(".mnli.", ".sst2.")] = state[k].clone()
    (tmp_path / "two").mkdir()
    save_checkpoint(state, tmp_path / "two" / "model.pt", "released")
    with pytest.raises(ValueError, match=r"\['mnli', 'sst2'\].*--fairseq_head"):
        fairseq.from_fairseq(str(tmp_path / "two"))
    _, params = fairseq.from_fairseq(str(tmp_path / "two"), head="sst2")
    assert params["classifier"]["out"]["kernel"].shape == (48, 3)
    # A newer cfg that only names the arch: fairseq's roberta defaults (12 x 768) do not fit.
    (tmp_path / "thin").mkdir()
    save_checkpoint(fairseq_state(mlm.state_dict(), None, 2, "newer"),
                    tmp_path / "thin" / "model.pt", "newer", {"max_positions": 32})
    with pytest.raises(ValueError, match=r"cfg\['model'\].*12 layers of width 768.*2 of width 48"):
        fairseq.from_fairseq(str(tmp_path / "thin"))


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle2", "pickle4"])
def test_pickle_that_runs_a_command_is_refused(kind, tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    ckpt = {"args": Evil(target), "model": {}}
    if kind.startswith("pickle"):  # a bare pickle; protocol 4 is one torch cannot even parse
        import pickle
        path.write_bytes(pickle.dumps(ckpt, protocol=int(kind[-1])))
    else:
        torch.save(ckpt, path, _use_new_zipfile_serialization=kind == "zip")
    with pytest.raises(fairseq.UnsafeCheckpointError,
                       match=r"model\.pt: refused.*(posix|os)\.system.*Nothing in the file"):
        convert.read(str(tmp_path), "fairseq")
    assert not target.exists()


class Meter:  # stands in for a training-state class a checkpoint might pickle
    def __init__(self):
        self.avg = 1.5


def test_unknown_class_is_named_and_runs_only_when_trusted(models, tmp_path, caplog):
    folder = fairseq_dir(tmp_path, models, "newer")
    ckpt = torch.load(folder / "model.pt", weights_only=False)
    ckpt["extra_state"]["meter"] = Meter()
    torch.save(ckpt, folder / "model.pt")
    with pytest.raises(fairseq.UnsafeCheckpointError, match=r"test_fairseq\.Meter"):
        fairseq.from_fairseq(str(folder))
    with caplog.at_level(logging.WARNING):
        config, _ = fairseq.from_fairseq(str(folder), trusted=True)
    assert config.num_layers == 2 and "without restrictions" in caplog.text


# --- corpora --------------------------------------------------------------------------------

def spec_write(prefix, seqs, code, dtype, doc_idx=None):
    """MMIDIDX per its specification (independently of robertax's writer)."""
    blobs = [np.asarray(s, dtype).tobytes() for s in seqs]
    with open(f"{prefix}.bin", "wb") as f:
        f.write(b"".join(blobs))
    sizes = np.array([len(s) for s in seqs], np.int32)
    pointers = np.cumsum([0] + [len(b) for b in blobs[:-1]]).astype(np.int64)
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code))
        f.write(struct.pack("<Q", len(seqs)))
        if doc_idx is not None:
            f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes() + pointers.tobytes())
        if doc_idx is not None:
            f.write(np.asarray(doc_idx, np.int64).tobytes())


def make_corpus(rng, docs, vocab, eos=2):
    """Documents of lines as fairseq-preprocess writes them: each line ends in </s>, and an
    empty line (just </s>) between documents. Returns (sequences, expected documents)."""
    seqs, expected = [], []
    for d in range(docs):
        doc = [rng.integers(4, vocab - 1, rng.integers(1, 20)).tolist()
               for _ in range(rng.integers(1, 7))]
        expected.append(doc)
        seqs += [s + [eos] for s in doc]
        if d < docs - 1:
            seqs.append([eos])
    return seqs, expected


@pytest.mark.parametrize("variant", ["fairseq", "megatron"])
def test_indexed_dataset_reads_back_exactly(variant, tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 60000, n).tolist() for n in (5, 0, 1, 17, 3)]
    code, dtype = (8, np.uint16) if variant == "fairseq" else (4, np.int32)
    doc_idx = None if variant == "fairseq" else [0, 2, 5]
    spec_write(str(tmp_path / "spec"), seqs, code, dtype, doc_idx)
    fc.write_indexed(str(tmp_path / "ours"), seqs, dtype, doc_idx)
    for ext in (".bin", ".idx"):  # our writer follows the spec byte for byte
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"spec{ext}").read_bytes()
    ds = fc.IndexedDataset(str(tmp_path / "spec"))
    assert ds.index.dtype == np.dtype(dtype) and len(ds) == 5
    assert [ds[i].tolist() for i in range(5)] == seqs
    assert (ds.index.doc_idx is None) == (doc_idx is None)
    with open(tmp_path / "spec.idx", "r+b") as f:  # a float dtype code is not token data
        f.seek(17)
        f.write(b"\x06")
    with pytest.raises(ValueError, match=r"spec\.idx: dtype code 6"):
        fc.IndexedDataset(str(tmp_path / "spec"))


def test_megatron_doc_idx_gives_documents(tmp_path):
    seqs = [[5, 6, 2], [7, 2], [8, 9, 10, 2], [11, 2]]
    fc.write_indexed(str(tmp_path / "train"), seqs, np.int32, doc_idx=[0, 1, 3, 4])
    write_dict(tmp_path / "dict.txt", 20)
    fc.to_shards(str(tmp_path), str(tmp_path / "out"))
    corpus = shards.ShardedCorpus(str(tmp_path / "out"), "train")
    assert corpus.index.doc_sentences.tolist() == [1, 2, 1]
    assert [s.tolist() for s in corpus.sentences(0, 4)] == [[5, 6], [7], [8, 9, 10], [11]]


def test_roberta_ids_pass_through_with_the_tokenizer(test_data, tmp_path):
    """With RoBERTa's dict.txt, fairseq's ids are RoBERTa's: the shards decode to the text."""
    from robertax import tokenizer
    bpe = str(test_data / "bpe" / "gpt2_bpe")  # encoder.json + vocab.bpe + dict.txt
    tok = tokenizer.load(bpe)
    texts = ["Hello world!", "RoBERTa reads fairseq data.", "", "A second document."]
    seqs = [tok.encode_plain(t) + [2] for t in texts]  # as fairseq-preprocess binarizes lines
    fc.write_indexed(str(tmp_path / "train"), seqs, np.uint16)
    manifest = fc.to_shards(str(tmp_path / "train"), str(tmp_path / "out"),
                            dictionary=f"{bpe}/dict.txt", tokenizer=bpe)
    assert manifest["vocab_size"] == 50265 and manifest["special_ids"]["mask"] == 50264
    assert manifest["tokenizer"]["fingerprint"] == tok.fingerprint
    corpus = shards.ShardedCorpus(str(tmp_path / "out"), "train")
    assert corpus.index.doc_sentences.tolist() == [2, 1]
    assert [tok.decode(s) for s in corpus.sentences(0, 3)] == [t for t in texts if t]
    assert tokenizer.load(str(tmp_path / "out" / "tokenizer")).fingerprint == tok.fingerprint


def test_binarized_corpus_converts_and_trains(tmp_path):
    rng = np.random.default_rng(1)
    vocab = 128
    data = tmp_path / "data-bin"
    data.mkdir()
    write_dict(data / "dict.txt", vocab)
    train_seqs, train_docs = make_corpus(rng, 40, vocab)
    valid_seqs, _ = make_corpus(rng, 3, vocab)  # under one batch: evaluation is skipped
    spec_write(str(data / "train"), train_seqs, 8, np.uint16)
    spec_write(str(data / "valid"), valid_seqs, 8, np.uint16)
    out = tmp_path / "shards"
    fc.main([f"--input={data}", f"--output={out}", "--sentences_per_shard=50"])  # the CLI
    manifest = shards.read_manifest(str(out))
    assert manifest["vocab_size"] == vocab and manifest["special_ids"]["mask"] == vocab - 1
    assert manifest["tokenizer"]["fingerprint"].startswith("fairseq-dict:")
    assert manifest["input"]["train"]["empty_lines"] == 39
    corpus = shards.ShardedCorpus(str(out), "train")
    assert len(corpus.paths) > 1  # several shards; documents may span them
    assert corpus.index.doc_sentences.tolist() == [len(d) for d in train_docs]
    flat = [s for d in train_docs for s in d]
    assert [s.tolist() for s in corpus.sentences(0, len(flat))] == flat  # eos stripped

    from configs import tiny
    from robertax import observe, train
    c = tiny.get_config()
    c.data.corpus = str(out)
    c.model.vocab_size = vocab
    c.model.update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                   max_position_embeddings=66)
    c.data.max_length, c.data.max_predictions = 64, 12
    c.optim.total_steps, c.optim.warmup_steps = 3, 1
    c.batch_size, c.log_every, c.eval_every, c.eval_batches = 8, 1, 1000, 1
    train.train(c, str(tmp_path / "run"))
    losses = [r["loss"] for r in observe.read_metrics(str(tmp_path / "run")) if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert abs(losses[0] - np.log(vocab)) < 1.0  # a fresh model's MLM loss on this vocabulary
