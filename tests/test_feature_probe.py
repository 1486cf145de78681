"""tools/feature_probe.py: the frozen features are the encoder's last layer (<s> and the mean over
real tokens, padding ignored), and the report covers the checkpoint, random weights and the
majority class on the same training subset as robertax.finetune."""

import collections
import os
import sys

import numpy as np

from robertax import finetune
from robertax.tasks import glue, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import feature_probe  # noqa: E402


def _config(pretrained, test_data, **kw):
    return feature_probe.load_config(
        os.path.join(REPO, "configs", "finetune", "sst2.py"), init_checkpoint=pretrained,
        data_dir=str(test_data / "glue"), max_train_examples=40, max_eval_examples=30, max_length=64,
        precision="float32", **kw)


def test_features_ignore_padding(pretrained, test_data):
    p = finetune.prepare(_config(pretrained, test_data))
    arrays = {k: v[:6] for k, v in p.train.items()}
    cls, mean = feature_probe.features(p.model_config, p.params["encoder"], arrays)
    assert cls.shape == mean.shape == (6, p.model_config.hidden_size)
    for i in range(6):  # one sentence at a time, cut to its own length: no padding at all
        n = int(arrays["attention_mask"][i].sum())
        one = {"input_ids": arrays["input_ids"][i:i + 1, :n],
               "attention_mask": arrays["attention_mask"][i:i + 1, :n], "weight": np.ones(1)}
        c1, m1 = feature_probe.features(p.model_config, p.params["encoder"], one)
        np.testing.assert_allclose(c1[0], cls[i], atol=1e-4)
        np.testing.assert_allclose(m1[0], mean[i], atol=1e-4)
    # rows the loop added as padding (weight 0) are dropped
    arrays["weight"] = np.array([1, 1, 0, 1, 0, 1], np.float32)
    cls4, _ = feature_probe.features(p.model_config, p.params["encoder"], arrays)
    np.testing.assert_allclose(cls4, cls[[0, 1, 3, 5]], atol=1e-5)


def test_probe_reports_checkpoint_random_and_majority(pretrained, test_data):
    r = feature_probe.probe(_config(pretrained, test_data))
    assert r["task"] == "SST-2" and r["train_examples"] == 40 and r["dev_examples"] == 30
    for name in ("pretrained", "random init"):
        for kind in ("<s>", "mean"):
            s = r[name][kind]
            assert 0.0 <= s["dev_accuracy"] <= 1.0 and s["C"] > 0
    # The majority class of the same training subset robertax.finetune reads, scored on dev.
    train = runner.subset(glue.read_tsv("SST-2", str(test_data / "glue"), "train"), 40, 0)
    label = collections.Counter(ex.label for ex in train).most_common(1)[0][0]
    dev = glue.read_tsv("SST-2", str(test_data / "glue"), "validation")[:30]
    assert r["majority"] == np.mean([ex.label == label for ex in dev])
