"""Conversion: the CLI between formats, and clear errors on bad input."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from robertax import checkpoint, convert
from test_model import CONFIGS, hf_config, scale_up


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
