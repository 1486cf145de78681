"""Conversion: the CLI between formats, and clear errors on bad input."""

import json
import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from robertax import checkpoint, convert, model as M
from test_model import CONFIGS, hf_config, max_diff_real, padded_batch, scale_up


@pytest.fixture()
def hf_dir(tmp_path):
    torch.manual_seed(0)
    hf = scale_up(transformers.RobertaForMaskedLM(hf_config(**CONFIGS[1])), seed=1)
    hf.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_cli_hf_to_robertax_to_hf_is_exact(hf_dir, tmp_path):
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    run = lambda *a: subprocess.run([sys.executable, "-m", "robertax.convert", *a], cwd=repo,
                                    check=True, capture_output=True, text=True)
    out = run(f"--src={hf_dir}", f"--dst={tmp_path / 'ours'}")
    assert "(hf) ->" in out.stdout and "(robertax)" in out.stdout
    assert checkpoint.is_model_dir(str(tmp_path / "ours"))
    run(f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'back'}", "--dst_format=hf")
    a, b = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "back" /
                                                              "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_pytorch_model_bin_is_read(hf_dir, tmp_path):
    hf = transformers.RobertaForMaskedLM.from_pretrained(str(hf_dir))
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((hf_dir / "config.json").read_text())
    _, p1 = convert.from_hf(str(hf_dir))
    _, p2 = convert.from_hf(str(tmp_path / "bin"))
    for x, y in zip(__import__("jax").tree.leaves(p1), __import__("jax").tree.leaves(p2)):
        np.testing.assert_array_equal(x, y)


def test_bert_config_is_refused(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["model_type"] = "bert"
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        convert.from_hf(str(hf_dir))


def test_missing_tensor_is_named(hf_dir):
    t = load_file(hf_dir / "model.safetensors")
    del t["roberta.encoder.layer.1.output.dense.weight"]
    save_file(t, hf_dir / "model.safetensors")
    with pytest.raises(KeyError, match=r"roberta\.encoder\.layer\.1\.output\.dense\.weight"):
        convert.from_hf(str(hf_dir))


def test_shape_mismatch_names_tensor_and_both_shapes(hf_dir):
    t = load_file(hf_dir / "model.safetensors")
    t["roberta.encoder.layer.0.intermediate.dense.weight"] = np.zeros((81, 48), np.float32)
    save_file(t, hf_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight.*\(81, 48\).*\(80, 48\)"):
        convert.from_hf(str(hf_dir))


def test_extra_tensors_are_listed(hf_dir, caplog):
    t = load_file(hf_dir / "model.safetensors")
    t["roberta.pooler.dense.weight"] = np.zeros((48, 48), np.float32)
    save_file(t, hf_dir / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        convert.from_hf(str(hf_dir))
    assert "roberta.pooler.dense.weight" in caplog.text


def test_unknown_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot tell its format"):
        convert.detect_format(str(tmp_path))


# --- heads, labels and refusals --------------------------------------------------------------

SMALL = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=34)


def hf_out(model, ids, mask, **kw):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw)


def test_untied_mlm_head_is_refused(tmp_path):
    torch.manual_seed(0)
    hf = scale_up(transformers.RobertaForMaskedLM(hf_config(**SMALL, tie_word_embeddings=False)),
                  seed=2)
    hf.save_pretrained(tmp_path / "untied")
    with pytest.raises(ValueError, match=r"untied/model\.safetensors: lm_head\.decoder\.weight "
                                         r"differs from roberta\.embeddings\.word_embeddings"):
        convert.from_hf(str(tmp_path / "untied"))
    # A tied model with the copies written out converts; a differing decoder bias does not.
    tied = scale_up(transformers.RobertaForMaskedLM(hf_config(**SMALL)), seed=2)
    tied.save_pretrained(tmp_path / "tied")
    t = load_file(tmp_path / "tied" / "model.safetensors")
    t["lm_head.decoder.weight"] = t["roberta.embeddings.word_embeddings.weight"].copy()
    t["lm_head.decoder.bias"] = t["lm_head.bias"].copy()
    save_file(t, tmp_path / "tied" / "model.safetensors")
    assert "mlm_head" in convert.from_hf(str(tmp_path / "tied"))[1]
    t["lm_head.decoder.bias"] = t["lm_head.bias"] + 1.0
    save_file(t, tmp_path / "tied" / "model.safetensors")
    with pytest.raises(ValueError, match=r"lm_head\.decoder\.bias differs from lm_head\.bias"):
        convert.from_hf(str(tmp_path / "tied"))


@pytest.mark.parametrize("key", ["is_decoder", "add_cross_attention"])
def test_decoder_configs_are_refused(hf_dir, key):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg[key] = True
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"config\.json: {key} is true"):
        convert.from_hf(str(hf_dir))


def test_sharded_checkpoints_are_read(tmp_path):
    torch.manual_seed(0)
    hf = scale_up(transformers.RobertaForMaskedLM(hf_config(**SMALL)), seed=3)
    hf.save_pretrained(tmp_path / "st", max_shard_size="20KB")
    index = json.loads((tmp_path / "st" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (tmp_path / "st" / "model.safetensors").exists()
    assert convert.detect_format(str(tmp_path / "st")) == "hf"
    config, params = convert.from_hf(str(tmp_path / "st"))
    ids, mask = padded_batch(config.vocab_size, seed=3)
    want = hf_out(hf, ids, mask).logits.numpy()
    got = np.asarray(M.RobertaForMaskedLM(config).apply({"params": params}, jnp.asarray(ids)))
    assert np.abs(want[mask]).max() > 2.0 and max_diff_real(got, want, mask) < 1e-5

    # The PyTorch variant: pytorch_model.bin.index.json + pytorch_model-0000i-of-0000n.bin.
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.decoder.weight"}
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k].clone() for k in part}, tmp_path / "pt" / file)
        weight_map.update({k: file for k in part})
    (tmp_path / "pt" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert convert.detect_format(str(tmp_path / "pt")) == "hf"
    _, again = convert.from_hf(str(tmp_path / "pt"))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(x, y)
    (tmp_path / "pt" / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin\.index\.json lists shard "
                                                r"pytorch_model-00002-of-00002\.bin, which is "
                                                r"missing"):
        convert.from_hf(str(tmp_path / "pt"))


def test_question_answering_head_both_ways(tmp_path, caplog):
    torch.manual_seed(0)
    hf = scale_up(transformers.RobertaForQuestionAnswering(hf_config(**SMALL)), seed=4)
    hf.save_pretrained(tmp_path / "hf")
    config, params = convert.from_hf(str(tmp_path / "hf"))
    assert params["span"]["kernel"].shape == (32, 2)
    ids, mask = padded_batch(config.vocab_size, seed=4)
    want = hf_out(hf, ids, mask)
    got = M.RobertaForQuestionAnswering(config).apply({"params": params}, jnp.asarray(ids),
                                                      jnp.asarray(mask))
    start, end = want.start_logits.numpy(), want.end_logits.numpy()
    assert np.abs(start - end)[mask].max() > 1.0  # swapping start and end would show
    assert max_diff_real(got.start_logits, start, mask) < 1e-5
    assert max_diff_real(got.end_logits, end, mask) < 1e-5

    # Back to HF, with SQuAD v2.0's answerable classifier, which HF has no place for.
    params["answerable"] = {"dense": {"kernel": np.ones((32, 32), np.float32)}}
    with caplog.at_level(logging.WARNING):
        convert.to_hf(config, params, str(tmp_path / "back"))
    assert "['answerable']" in caplog.text and "not written" in caplog.text
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["architectures"] == ["RobertaForQuestionAnswering"]
    back, info = transformers.RobertaForQuestionAnswering.from_pretrained(
        str(tmp_path / "back"), output_loading_info=True)
    assert not info["missing_keys"]
    again = hf_out(back.eval(), ids, mask)
    assert max_diff_real(again.start_logits.numpy(), start, mask) < 1e-5
    assert max_diff_real(again.end_logits.numpy(), end, mask) < 1e-5


def test_race_scorer_is_multiple_choice_both_ways(tmp_path):
    """RACE's one-output scorer is HF's RobertaForMultipleChoice (pooler + Linear(D, 1)), not a
    regression model."""
    torch.manual_seed(0)
    hf = scale_up(transformers.RobertaForMultipleChoice(hf_config(**SMALL)), seed=5)
    hf.save_pretrained(tmp_path / "hf")
    config, params, meta = convert.read_hf(str(tmp_path / "hf"))
    assert meta == {"multiple_choice": True}
    ids, mask = padded_batch(config.vocab_size, seed=5, B=3)
    ids, mask = ids[None].repeat(2, 0), mask[None].repeat(2, 0)  # [2 questions, 3 choices, L]
    ids[1, :, 1] = 7
    want = hf_out(hf, ids, mask).logits.numpy()
    got = M.RobertaForMultipleChoice(config).apply({"params": params}, jnp.asarray(ids),
                                                   jnp.asarray(mask))
    assert np.ptp(want, axis=1).min() > 0.01 and np.abs(np.asarray(got) - want).max() < 1e-5

    # As fine-tuning saves RACE's best model (no "multiple_choice" key: its task says it).
    checkpoint.save_model(str(tmp_path / "best"), config, params,
                          {"task": "RACE", "num_choices": 4, "metric": "accuracy"})
    convert.main([f"--src={tmp_path / 'best'}", f"--dst={tmp_path / 'back'}"])
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["architectures"] == ["RobertaForMultipleChoice"]
    assert "problem_type" not in cfg and cfg["finetuning_task"] == "RACE"
    back, info = transformers.RobertaForMultipleChoice.from_pretrained(
        str(tmp_path / "back"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert np.abs(hf_out(back.eval(), ids, mask).logits.numpy() - want).max() < 1e-5
    # tmp_path now holds best/ as a fine-tuning workdir does: --src=WORKDIR reads best/
    assert convert.detect_format(str(tmp_path)) == "robertax"
    convert.main([f"--src={tmp_path}", f"--dst={tmp_path / 'back2'}"])
    assert (json.loads((tmp_path / "back2" / "config.json").read_text())
            == json.loads((tmp_path / "back" / "config.json").read_text()))


def test_label_names_travel_both_ways(tmp_path):
    torch.manual_seed(0)
    labels = {0: "negative", 1: "positive"}
    hf = scale_up(transformers.RobertaForSequenceClassification(
        hf_config(**SMALL, id2label=labels, label2id={v: k for k, v in labels.items()})), seed=6)
    hf.save_pretrained(tmp_path / "hf")
    convert.main([f"--src={tmp_path / 'hf'}", f"--dst={tmp_path / 'ours'}"])
    meta = json.loads((tmp_path / "ours" / checkpoint.CONFIG_FILE).read_text())
    assert meta["labels"] == ["negative", "positive"]  # the key and format fine-tuning writes
    convert.main([f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'back'}"])
    back = transformers.RobertaForSequenceClassification.from_pretrained(str(tmp_path / "back"))
    assert back.config.id2label == labels and back.config.label2id == {"negative": 0,
                                                                       "positive": 1}
    # A fine-tuned best/ dir: its "labels" name the classes of the exported model.
    config, params = convert.from_hf(str(tmp_path / "hf"))
    checkpoint.save_model(str(tmp_path / "best"), config, params,
                          {"task": "MNLI", "labels": ["x", "y"], "num_labels": 2})
    convert.main([f"--src={tmp_path / 'best'}", f"--dst={tmp_path / 'mnli'}"])
    cfg = json.loads((tmp_path / "mnli" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "x", "1": "y"} and cfg["finetuning_task"] == "MNLI"
    # transformers' default names are not stored
    hf = transformers.RobertaForSequenceClassification(hf_config(**SMALL))
    hf.save_pretrained(tmp_path / "plain")
    assert convert.read_hf(str(tmp_path / "plain"))[2] == {}
    # config.json's finetuning_task travels as written; ids that are not the classifier's
    # outputs 0..n-1 are refused, naming the file.
    cfg_path = tmp_path / "plain" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "finetuning_task": "mnli"}))
    convert.main([f"--src={tmp_path / 'plain'}", f"--dst={tmp_path / 'plain_ours'}"])
    meta = json.loads((tmp_path / "plain_ours" / checkpoint.CONFIG_FILE).read_text())
    assert meta["finetuning_task"] == "mnli" and "task" not in meta
    convert.main([f"--src={tmp_path / 'plain_ours'}", f"--dst={tmp_path / 'plain_back'}"])
    assert json.loads((tmp_path / "plain_back" / "config.json").read_text())[
        "finetuning_task"] == "mnli"
    for id2label, message in (({"0": "a", "2": "b"}, r"must be 0\.\.1.*got \[0, 2\]"),
                              ({"zero": "a", "one": "b"}, "must be integers")):
        cfg_path.write_text(json.dumps({**cfg, "id2label": id2label}))
        with pytest.raises(ValueError, match=str(cfg_path) + ".*" + message):
            convert.read_hf(str(tmp_path / "plain"))


def test_cli_errors_and_dst_format(hf_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert.main([f"--src={tmp_path / 'nope'}", f"--dst={tmp_path / 'out'}"])
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    res = subprocess.run([sys.executable, "-m", "robertax.convert", f"--src={tmp_path / 'nope'}",
                          f"--dst={tmp_path / 'out'}"], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: --src={tmp_path / 'nope'} does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: cannot tell its format .*; pass --src_format$"):
        convert.main([f"--src={tmp_path / 'empty'}", f"--dst={tmp_path / 'out'}"])
    # --dst=*.pt without --dst_format writes fairseq
    convert.main([f"--src={hf_dir}", f"--dst={tmp_path / 'out.pt'}"])
    assert (tmp_path / "out.pt").is_file() and (tmp_path / "dict.txt").is_file()
    assert convert.detect_format(str(tmp_path / "out.pt")) == "fairseq"


def test_the_tokenizer_travels_with_the_model(test_data, hf_dir, tmp_path, caplog):
    """A converted model can be fine-tuned without naming its tokenizer, and a Hugging Face
    export loads in transformers' own tokenizer."""
    import shutil

    from robertax import tokenizer as tokenizer_lib
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(hf_config(**{**SMALL, "vocab_size": 50265}))
    hf.save_pretrained(tmp_path / "hf_tok")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(test_data / "bpe" / "roberta-base_hf" / name, tmp_path / "hf_tok" / name)
    want = tokenizer_lib.load(str(tmp_path / "hf_tok"))
    convert.main([f"--src={tmp_path / 'hf_tok'}", f"--dst={tmp_path / 'ours'}"])
    assert tokenizer_lib.load(str(tmp_path / "ours" / "tokenizer")).fingerprint == want.fingerprint
    convert.main([f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'back'}", "--dst_format=hf"])
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    text = "Hello world, <mask> is a   test."
    assert theirs(text)["input_ids"] == want.encode(text)
    longest = hf.config.max_position_embeddings - hf.config.pad_token_id - 1  # 512 in roberta-base
    assert len(theirs(text * 100, truncation=True)["input_ids"]) == longest
    # Into a folder that holds the same tokenizer (here only vocab.json + merges.txt, copied
    # by hand): completed for transformers; a different one: refused, untouched.
    (tmp_path / "same").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "back" / name, tmp_path / "same" / name)
    convert.main([f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'same'}", "--dst_format=hf"])
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "same"))
    assert theirs(text)["input_ids"] == want.encode(text)
    tokenizer_lib.ByteBPETokenizer(want.vocab, want.merges[:-1]).save(str(tmp_path / "other"))
    before = (tmp_path / "other" / "vocab.json").read_bytes()
    with pytest.raises(ValueError, match="already holds a different tokenizer"):
        convert.main([f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'other'}",
                      "--dst_format=hf"])
    assert (tmp_path / "other" / "vocab.json").read_bytes() == before
    assert not (tmp_path / "other" / "model.safetensors").exists()
    # No tokenizer, or one that is not the model's: the weights convert, with a warning.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(test_data / "bpe" / "roberta-base_hf" / name, hf_dir / name)
    with caplog.at_level(logging.WARNING):
        convert.main([f"--src={hf_dir}", f"--dst={tmp_path / 'small'}"])
    assert any("tokenizer not written" in r.getMessage() and "50265 tokens" in r.getMessage()
               for r in caplog.records)
    assert not (tmp_path / "small" / "tokenizer").exists()
    # With none to carry, a tokenizer at the destination that does not fit the model: refused.
    with pytest.raises(ValueError, match="holds a tokenizer of 50265 tokens.*does not fit"):
        convert.main([f"--src={tmp_path / 'small'}", f"--dst={tmp_path / 'back'}",
                      "--dst_format=hf"])


def test_a_pretraining_runs_tokenizer_is_found_without_preprocessing(test_data, tmp_path,
                                                                     monkeypatch):
    """Converting (or fine-tuning from) a run on text files takes config.data.tokenizer: it
    does not tokenize the corpus to find it. A relative model.pt's tokenizer is beside it."""
    import importlib

    monkeypatch.setenv("ROBERTAX_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    c = importlib.import_module("configs.tiny").get_config()
    c.data.corpus = str(test_data / "text" / "tinyshakespeare" / "input.txt")
    c.data.tokenizer = str(test_data / "bpe" / "roberta-base_hf")
    (run / "config.json").write_text(c.to_json())
    assert convert.tokenizer_dir(str(run), "robertax") == c.data.tokenizer
    assert not (tmp_path / "cache").exists()
    c.data.tokenizer = "builtin"
    (run / "config.json").write_text(c.to_json())
    with pytest.raises(FileNotFoundError, match="config.data.tokenizer names no tokenizer"):
        convert.tokenizer_dir(str(run), "robertax")
    monkeypatch.chdir(tmp_path)
    assert convert.tokenizer_dir("model.pt", "fairseq") == str(tmp_path)
