"""robertax.ensemble: the members' outputs combined by hand-worked numbers; GLUE (its command
line, with a member whose labels come in the other order), STS-B, SQuAD and RACE ensembles of
random transformers models equal the combination of transformers' own outputs; bad input is
refused, naming what is wrong, before anything is written."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from conftest import hf_copy
from robertax import ensemble, finetune
from robertax.model import SpanOutput
from robertax.tasks import glue, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_for(name, **kw):
    c = importlib.import_module(f"configs.finetune.{name}").get_config()
    c.max_length, c.max_eval_examples, c.eval_batch_size = 64, 24, 16
    c.progress, c.precision = False, "float32"
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _inputs(arrays):
    return {k: torch.tensor(np.asarray(arrays[k]), dtype=torch.long)
            for k in ("input_ids", "attention_mask")}


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_combine_by_hand():
    ln3 = np.log(3.0)
    a = np.array([[0.0, ln3], [5.0, 5.0]], np.float32)        # p = (1/4, 3/4), (1/2, 1/2)
    b = np.array([[ln3, 0.0], [0.0, np.log(1 / 3)]], np.float32)  # p = (3/4, 1/4), (3/4, 1/4)
    rte = runner.make_task(config_for("rte"))
    assert ensemble.how(rte) == "probabilities"
    np.testing.assert_allclose(np.exp(ensemble.combine(rte, [a, b])),
                               [[0.5, 0.5], [0.625, 0.375]], rtol=1e-6)
    # Far-apart logits: no overflow, the mean of (1, 0) and (0, 1) is (1/2, 1/2).
    out = ensemble.combine(rte, [np.array([[800.0, 0.0]]), np.array([[0.0, 800.0]])])
    np.testing.assert_allclose(np.exp(out), [[0.5, 0.5]], rtol=1e-6)

    stsb = runner.make_task(config_for("stsb"))
    assert ensemble.how(stsb) == "scores"
    np.testing.assert_allclose(ensemble.combine(stsb, [np.array([[1.0], [4.0]]),
                                                       np.array([[3.0], [2.0]])]), [[2.0], [3.0]])

    race = runner.make_task(config_for("race"))
    choices = [np.log(np.array([[0.1, 0.2, 0.3, 0.4]])), np.log(np.array([[0.7, 0.1, 0.1, 0.1]]))]
    np.testing.assert_allclose(np.exp(ensemble.combine(race, choices)),
                               [[0.4, 0.15, 0.2, 0.25]], rtol=1e-6)

    squad = runner.make_task(config_for("squad_v2"))
    assert ensemble.how(squad) == "logits"
    one = SpanOutput(np.array([[1.0, 2.0]]), np.array([[0.0, 4.0]]), np.array([[1.0, -1.0]]))
    two = SpanOutput(np.array([[3.0, 0.0]]), np.array([[2.0, 2.0]]), np.array([[3.0, 1.0]]))
    out = ensemble.combine(squad, [one, two])
    np.testing.assert_allclose(out.start_logits, [[2.0, 1.0]])
    np.testing.assert_allclose(out.end_logits, [[1.0, 3.0]])
    np.testing.assert_allclose(out.answerable_logits, [[2.0, 0.0]])
    v1 = ensemble.combine(runner.make_task(config_for("squad_v1")),
                          [SpanOutput(one.start_logits, one.end_logits),
                           SpanOutput(two.start_logits, two.end_logits)])
    assert v1.answerable_logits is None


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory, test_data):
    root = tmp_path_factory.mktemp("glue")
    for task in ("RTE", "STS-B"):
        os.symlink(test_data / "glue" / task, root / task)
    return root


def test_glue_ensemble_is_the_mean_of_transformers_probabilities(random_hf_roberta, glue_root,
                                                                 tmp_path):
    """Three RTE classifiers from the command line, the third naming its classes in the other
    order: dev predictions, accuracy, each member's accuracy and the submission file are those
    of transformers' probabilities averaged by label name."""
    labels = ("entailment", "not_entailment")
    models = [random_hf_roberta(tmp_path / f"m{s}", head="classifier", labels=labels, seed=s)
              for s in range(3)]
    # m2's weights with its classes named the other way round: robertax reorders its outputs.
    models[2] = hf_copy(models[2], tmp_path / "m2_relabelled",
                        id2label=dict(enumerate(labels[::-1])),
                        label2id={name: i for i, name in enumerate(labels[::-1])})
    workdir = tmp_path / "ensemble"
    done = subprocess.run(
        [sys.executable, "-m", "robertax.ensemble", "--config=configs/finetune/rte.py",
         f"--config.data_dir={glue_root}", "--config.max_length=64",
         "--config.max_eval_examples=24", "--config.precision=float32",
         "--config.predict_test=True", "--config.progress=False",
         "--models=" + ",".join(map(str, models)), f"--workdir={workdir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RTE ensemble of 3 (the mean of the members' probabilities): accuracy" in done.stdout

    p = finetune.prepare(ensemble.member_config(
        config_for("rte", data_dir=str(glue_root), predict_test=True), str(models[0])))
    dev, (test_task, _, test_examples, test_arrays) = p.eval_sets[0].arrays, p.test_sets[0]
    gold = dev["labels"]
    dev_probs, test_probs, member_acc = [], [], []
    for path in models:
        hf = transformers.RobertaForSequenceClassification.from_pretrained(path).eval()
        order = [[hf.config.id2label[i] for i in range(2)].index(name) for name in labels]
        with torch.no_grad():
            d = _softmax(hf(**_inputs(dev)).logits.numpy())[:, order]
            t = _softmax(hf(**_inputs(test_arrays)).logits.numpy())[:, order]
        dev_probs.append(d)
        test_probs.append(t)
        member_acc.append(float((d.argmax(-1) == gold).mean()))
    dev_mean, test_mean = np.mean(dev_probs, 0), np.mean(test_probs, 0)
    # The members disagree on some rows, so the average decides something.
    assert len({tuple(d.argmax(-1)) for d in dev_probs}) > 1

    results = json.load(open(workdir / "results.json"))
    assert results["ensemble"] == "probabilities" and results["task"] == "RTE"
    assert results["models"] == [str(m) for m in models]
    np.testing.assert_allclose([m["accuracy"] for m in results["members"]], member_acc)
    assert results["accuracy"] == pytest.approx(float((dev_mean.argmax(-1) == gold).mean()))
    assert results["submission"] == ["submission/RTE.tsv"]
    rows = [line.split("\t") for line in
            (workdir / "dev_predictions.tsv").read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == [labels[i] for i in dev_mean.argmax(-1)]
    sub = (workdir / "submission" / "RTE.tsv").read_text()
    assert sub == glue.format_predictions(test_task, test_mean.argmax(-1),
                                          [ex.idx for ex in test_examples])
    assert not (workdir / "best").exists()


def test_stsb_ensemble_averages_the_scores(random_hf_roberta, glue_root, tmp_path):
    models = [str(random_hf_roberta(tmp_path / f"m{s}", head="classifier", labels=("score",),
                                    seed=s)) for s in range(2)]
    c = config_for("stsb", data_dir=str(glue_root))
    results = ensemble.ensemble(c, models, tmp_path / "out")
    p = finetune.prepare(ensemble.member_config(c, models[0]))
    arrays = p.eval_sets[0].arrays
    with torch.no_grad():
        scores = [transformers.RobertaForSequenceClassification.from_pretrained(m).eval()(
            **_inputs(arrays)).logits.numpy()[:, 0] for m in models]
    want = glue.compute_metrics(glue.get_task("STS-B"), np.mean(scores, 0), arrays["labels"])
    assert results["ensemble"] == "scores"
    for name in ("pearson", "spearman"):
        assert results[name] == pytest.approx(want[name], abs=1e-5)


def test_squad_ensemble_decodes_the_mean_logits(random_hf_roberta, test_data, tmp_path):
    models = [str(random_hf_roberta(tmp_path / f"qa{s}", head="qa", seed=s)) for s in range(2)]
    c = config_for("squad_v1", eval_file=str(test_data / "squad" / "dev-v1.1.json"),
                   max_eval_examples=8, doc_stride=32)
    results = ensemble.ensemble(c, models, tmp_path / "out")
    p = finetune.prepare(ensemble.member_config(c, models[0]))
    es = p.eval_sets[0]
    start, end = [], []
    for m in models:
        with torch.no_grad():
            out = transformers.RobertaForQuestionAnswering.from_pretrained(m).eval()(
                **_inputs(es.arrays))
        start.append(out.start_logits.numpy())
        end.append(out.end_logits.numpy())
    mean = SpanOutput(np.mean(start, 0), np.mean(end, 0))
    want = json.loads(es.files(mean)["predictions.json"])
    got = json.load(open(tmp_path / "out" / "predictions.json"))
    assert got == want and len(got) == 8
    assert results["f1"] == pytest.approx(es.score(mean)["f1"])
    members = [json.loads(es.files(SpanOutput(s, e))["predictions.json"])
               for s, e in zip(start, end)]
    assert members[0] != members[1]  # the members answer differently: the mean decides


def test_race_ensemble_test_predictions(random_hf_roberta, test_data, tmp_path):
    models = [str(random_hf_roberta(tmp_path / f"mc{s}", head="choice", seed=s))
              for s in range(2)]
    c = config_for("race", data_dir=str(test_data / "race" / "RACE"), max_option_length=24,
                   predict_test=True, max_eval_examples=12)
    results = ensemble.ensemble(c, models, tmp_path / "out")
    p = finetune.prepare(ensemble.member_config(c, models[0]))
    test_set = p.test_sets[0]
    with torch.no_grad():
        probs = [_softmax(transformers.RobertaForMultipleChoice.from_pretrained(m).eval()(
            **_inputs(test_set.arrays)).logits.numpy()) for m in models]
    pred = np.mean(probs, 0).argmax(-1)
    assert results["test_accuracy"] == pytest.approx(float((pred == test_set.arrays["labels"])
                                                           .mean()))
    got = json.load(open(tmp_path / "out" / "test_predictions.json"))
    assert list(got.values()) == ["ABCD"[i] for i in pred]
    assert results["test_examples"] == 12


def test_bad_input_is_refused_before_anything_is_written(random_hf_roberta, glue_root,
                                                        tmp_path):
    labels = ("entailment", "not_entailment")
    a = random_hf_roberta(tmp_path / "a", head="classifier", labels=labels, seed=0)
    b = random_hf_roberta(tmp_path / "b", head="classifier", labels=labels, seed=1)
    # A member whose vocabulary numbers two words the other way round: same size, other ids.
    swapped = tmp_path / "swapped"
    shutil.copytree(b, swapped)
    vocab = json.load(open(swapped / "vocab.json"))
    vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]
    (swapped / "vocab.json").write_text(json.dumps(vocab))
    c = config_for("rte", data_dir=str(glue_root))
    out = tmp_path / "out"
    cases = [([a], "at least two models, got 1"),
             ([a, tmp_path / "x" / ".." / "a"], "names .*a twice"),
             ([a, swapped], "swapped: encodes the dev set differently from .*a .*tokenizer"),
             ([a, tmp_path / "missing"], "missing")]
    for models, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            ensemble.ensemble(c, [str(m) for m in models], out)
        assert not out.exists()
    c.init_checkpoint = str(a)
    with pytest.raises(ValueError, match="models are --models, not config.init_checkpoint"):
        ensemble.ensemble(c, [str(a), str(b)], out)
    c.init_checkpoint = ""
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="config.overwrite=True"):
        ensemble.ensemble(c, [str(a), str(b)], out)
    assert os.listdir(out) == ["results.json"]

    done = subprocess.run(
        [sys.executable, "-m", "robertax.ensemble", "--config=configs/finetune/rte.py",
         f"--config.data_dir={glue_root}", f"--models={a}", f"--workdir={tmp_path / 'cli'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: an ensemble needs at least two models, got 1 (config.do_train=False in "
        "robertax.finetune evaluates one)")
