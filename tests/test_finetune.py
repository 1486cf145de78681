"""Fine-tuning end to end: every GLUE task, SQuAD v1.1/v2.0 and RACE run through
`robertax.finetune` with a tiny pretrained model and write results.json with the right metric
names and prediction files that reproduce it; evaluation only (do_train=False) of a fine-tuned
model gives its training run's numbers; a converted Hugging Face classifier's first step has
transformers' loss and gradients and its label names put its outputs in the task's order; bad
input fails naming what is wrong, before a previous run's outputs are touched; the sweep tool
aggregates seeds by the median and reruns a finished cell whose settings changed."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from robertax import checkpoint, convert, finetune, observe
from robertax.tasks import glue, runner, squad

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import glue_sweep  # noqa: E402
from conftest import hf_copy  # noqa: E402


def config_for(name, init, **kw):
    """configs/finetune/<name>.py shrunk to a few steps of a tiny model on a CPU."""
    c = importlib.import_module(f"configs.finetune.{name}").get_config()
    c.init_checkpoint = init
    c.max_length, c.max_train_examples, c.max_eval_examples = 64, 32, 16
    c.max_steps, c.batch_size, c.eval_batch_size = 2, 8, 16
    c.log_every, c.progress, c.eval_every = 1, False, -1
    c.precision = "float32"  # not "auto": the same numbers on any backend
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")
NLI = [("A man is sleeping on the couch.", "A man is awake.", "contradiction"),
       ("Two dogs run across a field.", "Animals are outside.", "entailment"),
       ("A woman reads a book in a park.", "The woman is a teacher.", "neutral"),
       ("Children are playing football.", "Kids play a game.", "entailment")]


def make_glue_dir(root, test_data):
    """The shared GLUE folders, with MNLI and QQP (absent there) written with GLUE's real
    headers, and QNLI given a train file (the shared data has only its dev and test)."""
    for task in ("CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI"):
        os.symlink(test_data / "glue" / task, root / task)
    (root / "QNLI").mkdir()
    for name, src in (("train.tsv", "dev.tsv"), ("dev.tsv", "dev.tsv"), ("test.tsv", "test.tsv")):
        os.symlink(test_data / "glue" / "QNLI" / src, root / "QNLI" / name)
    rows = [NLI[i % 4] for i in range(24)]
    def line(i, a, b):
        return f"{i}\t{i}\t{i}n\tfiction\t( {a} )\t( {b} )\t(S {a})\t(S {b})\t{a}\t{b}"
    _write(root / "MNLI" / "train.tsv", MNLI_HEADER + "\tlabel1\tgold_label\n" + "".join(
        line(i, a, b) + f"\t{y}\t{y}\n" for i, (a, b, y) in enumerate(rows)))
    for split in ("dev_matched", "dev_mismatched"):
        _write(root / "MNLI" / f"{split}.tsv", MNLI_HEADER + "\tlabel1\tlabel2\tlabel3\tlabel4\t"
               "label5\tgold_label\n" + "".join(line(i, a, b) + f"\t{y}" * 6 + "\n"
                                                for i, (a, b, y) in enumerate(rows[:8])))
        _write(root / "MNLI" / f"test_{split[4:]}.tsv", MNLI_HEADER + "\n" + "".join(
            line(i, a, b) + "\n" for i, (a, b, _) in enumerate(rows[:5])))
    _write(root / "diagnostic" / "diagnostic.tsv", "index\tsentence1\tsentence2\n" + "".join(
        f"{i}\t{a}\t{b}\n" for i, (a, b, _) in enumerate(rows[:3])))
    qqp = [("How do I learn Python?", "What is the best way to learn Python?", 1),
           ("Why is the sky blue?", "How tall is Mount Everest?", 0)]
    body = "".join(f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{y}\n"
                   for i, (a, b, y) in enumerate(qqp * 12))
    head = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    _write(root / "QQP" / "train.tsv", head + body)
    _write(root / "QQP" / "dev.tsv", head + body)
    return root


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory, test_data):
    return make_glue_dir(tmp_path_factory.mktemp("glue"), test_data)


def check_outputs(workdir, results, metric_names):
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["task"] == results["task"]
    for name in metric_names:
        assert isinstance(on_disk[name], float), name
    rows = observe.read_metrics(workdir)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) and "learning_rate" in r for r in rows if "loss" in r)
    assert any(f"eval_{metric_names[0]}" in r for r in rows)
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert checkpoint.is_model_dir(os.path.join(workdir, "best"))


def run(name, init, workdir, **kw):
    return finetune.finetune(config_for(name, init, **kw), str(workdir))


GLUE_CASES = {  # config file -> metric names in results.json
    "cola": ("mcc",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"), "qnli": ("accuracy",), "rte": ("accuracy",),
    "wnli": ("accuracy",), "qqp": ("accuracy", "f1"),
}


@pytest.mark.parametrize("name", sorted(GLUE_CASES))
def test_glue_task_end_to_end(name, pretrained, glue_dir, tmp_path):
    predict = name in ("sst2", "stsb")  # leaderboard files for a classifier and the regressor
    # RTE also runs gradient accumulation (2 microbatches of 8, one row per fake device), WNLI
    # draws its dropout masks from the hash generator, CoLA runs attention (with its dropout)
    # through the fused kernel, model.attention="pallas".
    extra = {"rte": {"batch_size": 16, "microbatches": 2},
             "wnli": {"dropout_rng": "hash"}, "cola": {"attention": "pallas"}}.get(name, {})
    results = run(name, pretrained, tmp_path, data_dir=str(glue_dir), predict_test=predict,
                  **extra)
    check_outputs(tmp_path, results, GLUE_CASES[name])
    task = glue.get_task(results["task"])
    assert results["metric"] == task.metrics[0]
    _, params, extra = checkpoint.load_model(str(tmp_path / "best"))
    num_labels = 1 if task.is_regression else len(task.labels)
    assert np.shape(params["classifier"]["out"]["kernel"])[-1] == num_labels
    assert extra["task"] == task.name
    if predict:
        lines = (tmp_path / "submission" / task.submission["test"]).read_text().splitlines()
        assert lines[0] == "index\tprediction"
        assert len(lines) - 1 == len(glue.read_tsv(task, glue_dir, "test"))
    # The best model's dev predictions, with the gold labels: they give back its metrics.
    rows = [r.split("\t") for r in (tmp_path / "dev_predictions.tsv").read_text().splitlines()]
    assert rows[0] == ["index", "prediction", "label"] and len(rows) - 1 == 16
    dev = glue.read_tsv(task, glue_dir, task.dev_splits[0])[:16]
    assert [int(r[0]) for r in rows[1:]] == [ex.idx for ex in dev]
    if not task.is_regression:
        pred = [task.labels.index(r[1]) for r in rows[1:]]
        assert [task.labels.index(r[2]) for r in rows[1:]] == [ex.label for ex in dev]
        m = glue.compute_metrics(task, pred, [ex.label for ex in dev])
        assert m == pytest.approx({k: results[k] for k in task.metrics})


@pytest.fixture(scope="module")
def mnli_run(pretrained, glue_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mnli")
    return workdir, run("mnli", pretrained, workdir, data_dir=str(glue_dir), predict_test=True)


def test_mnli_matched_and_mismatched_and_submissions(mnli_run):
    workdir, results = mnli_run
    check_outputs(workdir, results, ("accuracy", "accuracy_mismatched"))
    assert results["eval_examples"] == {"dev": 8, "_mismatched": 8}
    sub = workdir / "submission"
    assert sorted(os.listdir(sub)) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]
    labels = {"entailment", "neutral", "contradiction"}
    for name, n in (("MNLI-m.tsv", 5), ("MNLI-mm.tsv", 5), ("AX.tsv", 3)):
        rows = [r.split("\t") for r in (sub / name).read_text().splitlines()[1:]]
        assert len(rows) == n and {r[1] for r in rows} <= labels


def test_rte_from_mnli_keeps_the_encoder_and_renews_the_head(mnli_run, glue_dir):
    workdir, _ = mnli_run
    best = str(workdir / "best")
    c = config_for("rte", "", data_dir=str(glue_dir), from_mnli=best)
    p = finetune.prepare(c)
    _, mnli_params, _ = checkpoint.load_model(best)
    for a, b in zip(jax.tree.leaves(p.params["encoder"]), jax.tree.leaves(mnli_params["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert np.shape(p.params["classifier"]["out"]["kernel"])[-1] == 2  # MNLI's had 3
    assert p.tokenizer_path == os.path.join(best, "tokenizer")
    # the MNLI run's workdir names the same model: its best/ (and best/tokenizer)
    by_workdir = finetune.prepare(config_for("rte", "", data_dir=str(glue_dir),
                                             from_mnli=str(workdir)))
    for a, b in zip(jax.tree.leaves(by_workdir.params["encoder"]),
                    jax.tree.leaves(p.params["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert by_workdir.tokenizer_path == os.path.join(best, "tokenizer")
    c.init_checkpoint = "/elsewhere"
    with pytest.raises(ValueError, match="give one"):
        finetune.prepare(c)


def test_evaluate_only_gives_the_training_runs_numbers_and_files(mnli_run, glue_dir, tmp_path):
    """do_train=False on a fine-tuned best/: the same dev metrics, prediction and submission
    files as the run that trained it, and no model or training logs of its own."""
    workdir, trained = mnli_run
    results = run("mnli", str(workdir / "best"), tmp_path, data_dir=str(glue_dir),
                  predict_test=True, do_train=False)
    assert (results["do_train"], results["steps_run"], results["train_examples"]) == (False, 0, 0)
    on_disk = json.load(open(tmp_path / "results.json"))
    for name in ("accuracy", "accuracy_mismatched"):
        assert on_disk[name] == results[name] == trained[name]
    assert results["eval_examples"] == trained["eval_examples"]
    for name in ("dev_predictions.tsv", "dev_predictions_mismatched.tsv", "submission/MNLI-m.tsv",
                 "submission/MNLI-mm.tsv", "submission/AX.tsv"):
        assert (tmp_path / name).read_text() == (workdir / name).read_text(), name
    assert not any(os.path.exists(tmp_path / n) for n in ("best", "metrics.jsonl", "tensorboard"))


def test_evaluate_only_needs_the_tasks_own_head(pretrained, mnli_run, glue_dir, tmp_path):
    best = str(mnli_run[0] / "best")
    cases = [(pretrained, {}, "has no 'classifier' head"),  # a pretraining run: no head at all
             (best, {}, "fine-tuned on MNLI, this run is RTE"),
             ("", {"from_mnli": best}, "from_mnli asks for a new"),
             (best, {"head": "fresh"}, "head='fresh' asks for a new")]
    for init, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            run("rte", init, tmp_path, data_dir=str(glue_dir), do_train=False, **kw)
    assert not os.listdir(tmp_path)  # refused before writing anything


def test_hf_label_names_put_the_head_in_the_tasks_order(hf_classifier, glue_dir, tmp_path):
    """An RTE classifier whose config.json lists its classes in the other order: its outputs
    are permuted, so the labels written are those transformers' model predicts, by name."""
    import torch
    path, hf = hf_classifier
    id2label = {"0": "NOT_ENTAILMENT", "1": "ENTAILMENT"}  # RTE's order is entailment first
    model = hf_copy(path, tmp_path / "hf_rte", id2label=id2label,
                     label2id={v: int(k) for k, v in id2label.items()})
    c = config_for("rte", str(model), data_dir=str(glue_dir), do_train=False)
    p = finetune.prepare(c)
    w = hf.classifier.out_proj.weight.detach().numpy()  # [labels, D]
    np.testing.assert_array_equal(np.asarray(p.params["classifier"]["out"]["kernel"]), w[::-1].T)

    finetune.finetune(c, str(tmp_path / "eval"))
    arrays = p.eval_sets[0].arrays
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(arrays["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(arrays["attention_mask"], dtype=torch.long)).logits
    theirs = [id2label[str(i)].lower() for i in logits.argmax(-1).tolist()]
    rows = (tmp_path / "eval" / "dev_predictions.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[1] for r in rows] == theirs


def test_a_head_for_another_task_is_replaced_with_a_warning(hf_classifier, glue_dir, tmp_path,
                                                            caplog):
    path, hf = hf_classifier
    w = hf.classifier.out_proj.weight.detach().numpy().T
    model = hf_copy(path, tmp_path / "hf_sst2", finetuning_task="sst2")
    p = finetune.prepare(config_for("rte", str(model), data_dir=str(glue_dir)))
    [warning] = [r for r in caplog.records if "fine-tuned on sst2" in r.getMessage()]
    assert warning.levelname == "WARNING" and "this run is RTE" in warning.getMessage()
    assert not np.allclose(np.asarray(p.params["classifier"]["out"]["kernel"]), w)
    # On its own task (any spelling) the head is kept.
    p = finetune.prepare(config_for("sst2", str(model), data_dir=str(glue_dir)))
    np.testing.assert_array_equal(np.asarray(p.params["classifier"]["out"]["kernel"]), w)
    # The task survives conversion to robertax, and from_mnli refuses it.
    ours = tmp_path / "ours_sst2"
    convert.main([f"--src={model}", f"--dst={ours}"])
    caplog.clear()
    finetune.prepare(config_for("rte", str(ours), data_dir=str(glue_dir)))  # its tokenizer too
    assert any("fine-tuned on sst2" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="was fine-tuned on sst2, not MNLI"):
        finetune.prepare(config_for("rte", "", data_dir=str(glue_dir), from_mnli=str(model)))


def test_random_init_is_the_same_model_with_new_weights(pretrained, glue_dir):
    """The no-pretraining baseline of tools/pretrain_helps.py."""
    _, ckpt, _ = checkpoint.load_model(pretrained)
    p = finetune.prepare(config_for("sst2", pretrained, data_dir=str(glue_dir), random_init=True))
    ours, theirs = jax.tree.leaves(p.params["encoder"]), jax.tree.leaves(ckpt["encoder"])
    assert [a.shape for a in ours] == [b.shape for b in theirs]
    assert not np.allclose(np.asarray(ours[0]), np.asarray(theirs[0]))


def test_each_batch_is_cut_to_its_own_longest_row(pretrained, glue_dir):
    """config.pad_to_multiple_of: a batch keeps every real token and loses only padding."""
    p = finetune.prepare(config_for("cola", pretrained, data_dir=str(glue_dir),
                                    max_train_examples=64))
    full = list(finetune.batches(p.train, 8, 0, 0))
    cut = list(finetune.batches(p.train, 8, 0, 0, multiple=8))
    width = p.train["input_ids"].shape[-1]
    lengths = set()
    for f, c in zip(full, cut, strict=True):
        longest = int(f["attention_mask"].sum(-1).max())
        length = c["input_ids"].shape[-1]
        assert length == min(width, -(-longest // 8) * 8)
        lengths.add(length)
        for key in f:
            trimmed = key in ("input_ids", "attention_mask")
            np.testing.assert_array_equal(c[key], f[key][..., :length] if trimmed else f[key])
        assert not f["attention_mask"][:, length:].any()
        assert (f["input_ids"][:, length:] == p.tokenizer.pad_id).all()
    assert len(lengths) > 1 and max(lengths) <= width  # CoLA: 16 or 24 tokens, not the longest


def test_a_cut_batch_gives_the_same_loss_gradients_and_predictions(pretrained, glue_dir):
    p = finetune.prepare(config_for("mrpc", pretrained, data_dir=str(glue_dir), dropout=0.0,
                                    attention_dropout=0.0, max_length=128))
    batch = next(finetune.batches(p.train, 8, 0, 0))
    short = runner.trim(batch, 8)
    assert short["input_ids"].shape[-1] < batch["input_ids"].shape[-1]
    grad = jax.value_and_grad(lambda params, b: finetune.batch_loss(p.module, p.task, params, b))
    (loss, grads), (loss_cut, grads_cut) = grad(p.params, batch), grad(p.params, short)
    assert abs(float(loss_cut) - float(loss)) <= 1e-5 * abs(float(loss))
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_cut), strict=True):
        assert np.linalg.norm(np.asarray(h - g)) <= 1e-4 * np.linalg.norm(np.asarray(g)) + 1e-9
    arrays = p.eval_sets[0].arrays
    longest = arrays["attention_mask"].sum(-1).reshape(-1, 8).max(-1)  # 16 rows: two batches
    assert (-(-longest // 8) * 8 < arrays["input_ids"].shape[-1]).any()
    run = finetune.predictor(p)
    whole = finetune.predict(run, p.params, p.mesh, arrays, 8)
    per_batch = finetune.predict(run, p.params, p.mesh, arrays, 8, multiple=8)
    np.testing.assert_allclose(per_batch, whole, rtol=1e-5, atol=1e-6)


def test_bench_finetune_counts_what_the_batches_hold(pretrained, glue_dir):
    import bench_finetune
    c = config_for("cola", pretrained, data_dir=str(glue_dir), max_train_examples=64,
                   max_steps=10)  # 8 batches an epoch: the count runs into a second epoch
    counts = bench_finetune.batch_counts(c, [0, 8])
    whole, cut = counts[0], counts[8]
    width = whole["data_length"]
    assert whole["lengths"] == [width] and whole["token_slots"] == 10 * 8 * width
    assert cut["real_tokens"] == whole["real_tokens"]  # the same rows, less padding
    assert cut["token_slots"] < whole["token_slots"] and len(cut["lengths"]) > 1
    p = finetune.prepare(c)
    want = sum(b["attention_mask"].sum() for e in (0, 1)
               for b in list(finetune.batches(p.train, 8, c.seed, e))[:10 - 8 * e])
    assert whole["real_tokens"] == want


def test_pad_to_multiple_of_is_checked_and_squad_keeps_its_length(pretrained, test_data):
    with pytest.raises(ValueError, match="pad_to_multiple_of=-8"):
        finetune.prepare(config_for("sst2", pretrained, pad_to_multiple_of=-8))
    squad_task = runner.make_task(config_for("squad_v1", pretrained))
    assert not squad_task.per_batch_length  # span logits over every position
    for name in ("sst2", "race", "wnli_wsc"):
        assert runner.make_task(config_for(name, pretrained)).per_batch_length, name


def test_squad_v1_end_to_end(pretrained, test_data, tmp_path):
    dev = str(test_data / "squad" / "dev-v1.1.json")
    results = run("squad_v1", pretrained, tmp_path, train_file=dev, eval_file=dev,
                  max_length=128, doc_stride=64, max_train_examples=24, max_eval_examples=12)
    check_outputs(tmp_path, results, ("exact_match", "f1"))
    assert results["metric"] == "f1" and results["eval_examples"] == {"dev": 12}
    assert "HasAns_f1" not in results
    # predictions.json is the official script's input: scoring it gives results.json's numbers.
    predictions = json.load(open(tmp_path / "predictions.json"))
    gold = squad.as_official(squad.read_json(dev)[:12])
    assert len(predictions) == 12 and not os.path.exists(tmp_path / "null_odds.json")
    assert squad.evaluate(gold, predictions, "1.1") == {
        k: results[k] for k in ("exact_match", "f1")}


def test_squad_v2_end_to_end_with_the_answerable_head(pretrained, test_data, tmp_path):
    dev = str(test_data / "squad" / "dev-v2.0.subset-Normans-Rhine.json")
    results = run("squad_v2", pretrained, tmp_path, train_file=dev, eval_file=dev,
                  max_length=128, doc_stride=64, max_train_examples=24, max_eval_examples=12)
    check_outputs(tmp_path, results, ("exact_match", "f1", "HasAns_f1", "NoAns_f1"))
    _, params, _ = checkpoint.load_model(str(tmp_path / "best"))
    assert {"encoder", "span", "answerable"} <= set(params)
    on_disk = json.load(open(tmp_path / "results.json"))
    assert (on_disk["total"], on_disk["HasAns_total"] + on_disk["NoAns_total"]) == (12, 12)
    assert all(type(on_disk[k]) is int for k in ("total", "HasAns_total", "NoAns_total"))
    predictions = json.load(open(tmp_path / "predictions.json"))
    gold = squad.as_official(squad.read_json(dev)[:12], "2.0")
    scored = squad.evaluate(gold, predictions, "2.0")
    assert scored == {k: on_disk[k] for k in scored}
    # null_odds.json: the no-answer score per question; "" exactly where it passes the threshold.
    null = json.load(open(tmp_path / "null_odds.json"))
    assert set(null) == set(predictions)
    assert all(predictions[q] == "" for q in null if null[q] > 0.0)
    assert all(null[q] <= 0.0 for q in null if predictions[q])


def test_race_end_to_end(pretrained, test_data, tmp_path, caplog):
    # The paper's 512 / 128 on a model of 128 positions: both shrink (to 128 / 32), no error.
    results = run("race", pretrained, tmp_path, data_dir=str(test_data / "race" / "RACE"),
                  max_length=512, max_option_length=128, batch_size=8, eval_batch_size=8,
                  max_eval_examples=10)
    check_outputs(tmp_path, results, ("accuracy", "accuracy_high", "accuracy_middle",
                                      "test_accuracy"))  # the dev set has both levels
    assert "max_option_length 128 -> 32" in caplog.text
    stored = json.load(open(tmp_path / "config.json"))
    assert (stored["max_length"], stored["max_option_length"]) == (128, 32)
    # The test accuracy is over the first max_eval_examples test questions, and says so.
    assert results["eval_examples"] == {"dev": 10} and results["test_examples"] == 10
    test_pred = json.load(open(tmp_path / "test_predictions.json"))
    dev_pred = json.load(open(tmp_path / "dev_predictions.json"))
    assert len(test_pred) == len(dev_pred) == 10 and set(test_pred.values()) <= set("ABCD")
    gold = {ex.id: "ABCD"[ex.label] for ex in runner.subset(
        runner.race.read_dir(test_data / "race" / "RACE", "test"), 10, None)}
    assert np.mean([test_pred[q] == a for q, a in gold.items()]) == results["test_accuracy"]


def test_early_stopping_keeps_the_best_evaluation(pretrained, glue_dir, tmp_path):
    results = run("sst2", pretrained, tmp_path, data_dir=str(glue_dir), max_steps=12,
                  eval_every=1, early_stopping_patience=2, learning_rate=3e-3)
    evals = results["evaluations"]
    scores = [e["accuracy"] for e in evals]
    assert results["accuracy"] == max(scores)
    assert results["step"] == evals[scores.index(max(scores))]["step"]
    if results["steps_run"] < 12:  # stopped: the last `patience` evaluations were no better
        assert all(s <= max(scores[:-2]) for s in scores[-2:])


def test_an_error_mid_run_closes_the_metric_writer(pretrained, glue_dir, tmp_path, monkeypatch,
                                                   writer_closes):
    """An exception in the loop (here from the first evaluation) still closes the TensorBoard
    writer (conftest.writer_closes says why)."""
    def broken(*_):
        raise RuntimeError("evaluation failed")
    monkeypatch.setattr(finetune, "evaluate_dev", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run("sst2", pretrained, tmp_path, data_dir=str(glue_dir), max_steps=2, eval_every=1)
    assert writer_closes == [True]


# ------------------------------------------------------------- parity with transformers


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory, test_data):
    """A tiny random transformers RobertaForSequenceClassification with RoBERTa's real
    50,265-token vocabulary (so its tokenizer files can sit beside it)."""
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(
        vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=130, type_vocab_size=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = transformers.RobertaForSequenceClassification(cfg).eval()
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(test_data / "bpe" / "roberta-base_hf" / name, path / name)
    return path, model


def test_first_step_loss_and_gradients_equal_transformers(hf_classifier, glue_dir, tmp_path):
    import torch
    path, hf = hf_classifier
    c = config_for("sst2", str(path), data_dir=str(glue_dir), dropout=0.0, attention_dropout=0.0,
                   max_steps=1)
    p = finetune.prepare(c)
    assert p.tokenizer.vocab_size == 50265 and p.tokenizer_path == str(path)
    batch = next(finetune.batches(p.train, c.batch_size, c.seed, 0))
    loss, grads = jax.value_and_grad(
        lambda params: finetune.batch_loss(p.module, p.task, params, batch))(p.params)

    out = hf(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
             attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
             labels=torch.tensor(batch["labels"], dtype=torch.long))
    hf.zero_grad()
    out.loss.backward()
    # Loss: float32 on both sides, the same summation up to order.
    assert abs(float(loss) - out.loss.item()) <= 1e-5 * abs(out.loss.item())
    ours = convert.params_to_tensors(jax.device_get(grads), p.model_config, lambda row: row.hf)
    theirs = {k: v.grad.numpy() for k, v in hf.named_parameters() if v.grad is not None}
    assert set(ours) == set(theirs)  # every tensor, heads included
    for name, g in theirs.items():
        # Relative error per tensor (norm of difference / norm), with an absolute floor for
        # tensors whose gradient is ~0 (e.g. the key bias, which softmax ignores).
        err = np.linalg.norm(ours[name] - g)
        assert err <= 1e-4 * np.linalg.norm(g) + 1e-9, name

    # The entry point's first logged loss is the same number (same batch, same seed).
    finetune.finetune(c, str(tmp_path))
    first = observe.read_metrics(str(tmp_path))[0]
    assert first["step"] == 1
    np.testing.assert_allclose(first["loss"], out.loss.item(), rtol=1e-5)


# -------------------------------------------------------------------------- bad input


def test_vocabulary_mismatch_names_both_sizes(pretrained, glue_dir, test_data):
    c = config_for("sst2", pretrained, data_dir=str(glue_dir),
                   tokenizer=str(test_data / "bpe" / "roberta-base_hf"))
    with pytest.raises(ValueError, match=r"vocab_size 8192 .* has 50265 tokens"):
        finetune.prepare(c)


def test_bad_inputs_name_what_is_wrong(pretrained, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SST-2/train.tsv"):
        finetune.prepare(config_for("sst2", pretrained, data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="expected a GLUE task"):
        finetune.prepare(config_for("sst2", pretrained, task="imdb"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        finetune.prepare(config_for("sst2", str(tmp_path / "nowhere")))
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="overwrite"):
        run("sst2", pretrained, tmp_path)


def test_a_select_metric_typo_fails_before_anything_is_read(glue_dir, tmp_path):
    # The checkpoint does not even exist: the metric is checked first, not after an epoch.
    with pytest.raises(ValueError, match=r"select_metric='acc' is not a metric of MRPC; "
                                         r"choose one of \['f1', 'accuracy'\]"):
        run("mrpc", str(tmp_path / "nowhere"), tmp_path / "w", data_dir=str(glue_dir),
            select_metric="acc")
    assert not os.path.exists(tmp_path / "w")
    assert "accuracy_mismatched" in runner.make_task(config_for("mnli", "")).metric_names
    assert "NoAns_f1" in runner.make_task(config_for("squad_v2", "")).metric_names


def test_nothing_to_train_points_to_evaluation_only(pretrained, glue_dir, tmp_path):
    with pytest.raises(ValueError, match=r"nothing to train.*do_train=False"):
        run("sst2", pretrained, tmp_path, data_dir=str(glue_dir), max_steps=0, num_epochs=0)


def test_overwrite_touches_nothing_until_the_inputs_are_read(pretrained, glue_dir, tmp_path):
    old = tmp_path / "run"
    (old / "best").mkdir(parents=True)
    for name in ("results.json", "best/robertax_config.json", "dev_predictions.tsv"):
        (old / name).write_text("{}")
    before = sorted(str(p.relative_to(old)) for p in old.rglob("*"))
    # Starting from this workdir's own best/ with overwrite would delete it: refused.
    with pytest.raises(ValueError, match=r"init_checkpoint=.*best' lies inside .*best, which "
                                         r"this run would delete"):
        run("sst2", str(old / "best"), old, data_dir=str(glue_dir), overwrite=True)
    # A bad data_dir fails while the previous run's outputs are all still there.
    with pytest.raises(FileNotFoundError, match="SST-2/train.tsv"):
        run("sst2", pretrained, old, data_dir=str(tmp_path / "nowhere"), overwrite=True)
    assert sorted(str(p.relative_to(old)) for p in old.rglob("*")) == before


# ------------------------------------------------------------------------------- sweep


def test_sweep_reports_median_over_seeds_and_best_setting(pretrained, glue_dir, tmp_path):
    fake = {(1e-5, 16): [0.5, 0.9, 0.6], (2e-5, 16): [0.7, 0.7, 0.1]}
    summary = glue_sweep.summarize({k: [{"task": "RTE", "metric": "accuracy", "accuracy": v}
                                        for v in vs] for k, vs in fake.items()})
    assert [s["median"]["accuracy"] for s in summary["settings"]] == [0.6, 0.7]
    assert (summary["best"]["learning_rate"], summary["best"]["batch_size"]) == (2e-5, 16)

    argv = [
        "--config", os.path.join(REPO, "configs/finetune/rte.py"), "--workdir", str(tmp_path),
        "--init_checkpoint", pretrained, "--learning_rates=1e-4", "--batch_sizes=8",
        "--seeds=2", "--max_steps=1", "--max_train_examples=16", "--max_eval_examples=8",
        f"--set=data_dir={glue_dir}", "--set=max_length=64", "--set=eval_every=-1",
        "--in_process"]
    summary = glue_sweep.sweep(glue_sweep.parse_args(argv))
    [setting] = summary["settings"]
    assert setting["seeds"] == 2 and len(setting["scores"]["accuracy"]) == 2
    assert setting["median"]["accuracy"] == float(np.median(setting["scores"]["accuracy"]))
    assert json.load(open(tmp_path / "sweep.json"))["metric"] == "accuracy"
    assert os.path.exists(tmp_path / "lr0.0001_bs8" / "seed1" / "results.json")

    # The same workdir with other settings: the finished cell is run again, not reused ...
    seed0 = tmp_path / "lr0.0001_bs8" / "seed0" / "results.json"
    assert json.load(open(seed0))["train_examples"] == 16
    argv = [a.replace("--max_train_examples=16", "--max_train_examples=24").replace(
        "--seeds=2", "--seeds=1") for a in argv]
    glue_sweep.sweep(glue_sweep.parse_args(argv))
    assert json.load(open(seed0))["train_examples"] == 24
    # ... and with the same settings again it is reused.
    mtime = os.stat(seed0).st_mtime_ns
    summary = glue_sweep.sweep(glue_sweep.parse_args(argv))
    assert os.stat(seed0).st_mtime_ns == mtime and summary["settings"][0]["seeds"] == 1


def test_cli_writes_results(pretrained, glue_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "robertax.finetune", "--config=configs/finetune/wnli.py",
         f"--config.init_checkpoint={pretrained}", f"--config.data_dir={glue_dir}",
         f"--workdir={tmp_path}", "--config.max_steps=1", "--config.batch_size=8",
         "--config.max_train_examples=8", "--config.max_eval_examples=8",
         "--config.max_length=64", "--config.progress=False"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.load(open(tmp_path / "results.json"))["task"] == "WNLI"


def test_cli_shows_bad_input_as_one_line(tmp_path):
    missing = str(tmp_path / "no_such_model")
    done = subprocess.run([sys.executable, "-m", "robertax.finetune", "--config.data_dir=x",
                           f"--config.init_checkpoint={missing}", f"--workdir={tmp_path / 'w'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: config.init_checkpoint={missing!r} does not exist")


def test_out_of_memory_says_what_to_change(monkeypatch, tmp_path):
    """finetune() runs inside sharding.memory_hint: XLA's out-of-memory error becomes a
    ValueError marked as bad input that names the microbatch and --config.microbatches (the
    message itself is tested with pretraining, tests/test_train.py)."""
    c = importlib.import_module("configs.finetune.base").get_config()
    c.batch_size, c.microbatches, c.max_length = 32, 2, 512

    def oom(config, workdir):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                         "allocate 9.50GiB.")
    monkeypatch.setattr(finetune, "_finetune", oom)
    with pytest.raises(ValueError, match=r"of 512 tokens at a time \(a microbatch of 16 over") as e:
        finetune.finetune(c, str(tmp_path))
    assert e.value.robertax_bad_input and "--config.microbatches (now 2;" in str(e.value)


@pytest.mark.parametrize("backend, cc, want", [
    ("cpu", None, "float32"), ("gpu", "9.0", "bfloat16"), ("gpu", "8.6", "bfloat16"),
    ("gpu", "7.5", "float16"), ("gpu", "gfx90a", "bfloat16"), ("tpu", None, "bfloat16")])
def test_auto_precision_follows_the_chip(backend, cc, want, monkeypatch):
    """precision="auto": float32 on CPUs, bfloat16 on TPUs and GPUs from Ampere on, float16
    (with loss scaling) on older CUDA GPUs such as Colab's T4 (7.5), which have no bfloat16
    units; a ROCm GPU names its architecture instead of a capability and keeps bfloat16."""
    class Device:
        pass
    if cc is not None:
        Device.compute_capability = cc
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "devices", lambda *a: [Device()])
    assert finetune._precision("auto") == want
    assert finetune._precision("float32") == "float32"
