"""QNLI's ranking formulation (Section 5.1, config.ranking): each question's candidate sentences
ranked, the top one "entailment". By hand-worked numbers; then on real QNLI rows a random
transformers classifier evaluated by robertax.finetune, and an ensemble of two, rank exactly as
transformers' own logits (probabilities) ranked by question do, while `accuracy` stays the pure
classification accuracy."""

import csv
import importlib
import json

import numpy as np
import pytest
import torch
import transformers

from robertax import ensemble, finetune
from robertax.tasks import glue, ranking, runner

LABELS = ("entailment", "not_entailment")


def config_for(data_dir, **kw):
    c = importlib.import_module("configs.finetune.qnli").get_config()
    c.data_dir, c.max_length, c.eval_batch_size = str(data_dir), 64, 32
    c.progress, c.precision, c.do_train, c.predict_test = False, "float32", False, True
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_rank_by_question_by_hand():
    questions = ["q1", "q2", "q1", "q3", "q3", "q3", "q4", "q5", "q5"]
    logits = np.array([
        [0.0, 2.0],    # q1, log-odds -2
        [1.0, 0.0],    # q2 alone: its argmax, entailment
        [-1.0, 0.0],   # q1, log-odds -1: q1's best, though both rows' argmax is not_entailment
        [3.0, 0.0],    # q3, log-odds 3
        [5.0, 1.0],    # q3, log-odds 4
        [2.0, -3.0],   # q3, log-odds 5: q3's best; the other two become not_entailment
        [0.0, 1.0],    # q4 alone: not_entailment
        [0.5, 0.5],    # q5, a tie: the first row wins
        [2.0, 2.0],
    ])
    assert ranking.rank_by_question(LABELS, logits, questions).tolist() == [1, 0, 0, 1, 1, 0, 1, 0, 1]
    # The head's classes the other way round: the same decisions, in that order's ids.
    flipped = ranking.rank_by_question(LABELS[::-1], logits[:, ::-1], questions)
    assert (1 - flipped).tolist() == [1, 0, 0, 1, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="ranking needs the classes 'entailment' and "
                                         "'not_entailment'; got \\['0', '1'\\]"):
        ranking.rank_by_question(("0", "1"), logits, questions)
    with pytest.raises(ValueError, match="9 rows of logits for 8 questions"):
        ranking.rank_by_question(LABELS, logits, questions[:8])
    with pytest.raises(ValueError, match=r"expected logits \[N, 2\]"):
        ranking.rank_by_question(LABELS, logits[:, 0], questions)


def test_ranking_is_qnli_only():
    c = importlib.import_module("configs.finetune.rte").get_config()
    c.ranking = True
    with pytest.raises(ValueError, match=r"config.ranking=True: .* not RTE's"):
        runner.make_task(c)
    c = importlib.import_module("configs.finetune.squad_v1").get_config()
    c.ranking = True
    with pytest.raises(ValueError, match=r"config.ranking=True: .* not squad's"):
        runner.make_task(c)
    with pytest.raises(ValueError, match=r"config.ranking_loss=-1.0: a weight"):
        runner.make_task(config_for("glue_data", ranking_loss=-1.0))
    with pytest.raises(ValueError, match=r"config.batch_size=8 over config.microbatches=8 "
                                         "leaves one row in each"):
        runner.make_task(config_for("glue_data", ranking_loss=1.0, batch_size=8, microbatches=8))
    rte = importlib.import_module("configs.finetune.rte").get_config()
    rte.ranking_loss = 0.5
    with pytest.raises(ValueError, match=r"config.ranking_loss=0.5: .* not RTE's"):
        runner.make_task(rte)
    qnli = runner.make_task(config_for("glue_data"))
    assert qnli.metric_names == ["accuracy", "accuracy_ranking"]
    assert runner.make_task(config_for("glue_data", ranking=False)).metric_names == ["accuracy"]


def _grouped_rows(path, pairs=20, singles=12):
    """Header and rows of a real QNLI file: the first `pairs` questions with two or more
    candidate sentences and the first `singles` with one, all their rows, in file order."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    count = {}
    for r in rows[1:]:
        count[r[1]] = count.get(r[1], 0) + 1
    many = [q for q in count if count[q] > 1][:pairs]
    one = [q for q in count if count[q] == 1][:singles]
    keep = set(many) | set(one)
    return rows[0], [r for r in rows[1:] if r[1] in keep]


@pytest.fixture(scope="module")
def qnli_root(tmp_path_factory, test_data):
    root = tmp_path_factory.mktemp("glue")
    (root / "QNLI").mkdir()
    for split in ("dev", "test"):
        header, rows = _grouped_rows(test_data / "glue" / "QNLI" / f"{split}.tsv")
        with open(root / "QNLI" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            f.write("".join("\t".join(r) + "\n" for r in [header] + rows))
    return root


def _ranked_by_hand(scores, questions):
    """The top-scoring row of each question of several rows is entailment (0), the rest 1;
    a question of one row: entailment iff its score (log-odds) is positive."""
    ids = []
    for i, (s, q) in enumerate(zip(scores, questions)):
        rivals = [j for j, other in enumerate(questions) if other == q and j != i]
        if not rivals:
            ids.append(0 if s > 0 else 1)
        else:  # first row wins a tie
            ids.append(0 if all(s > scores[j] or (s == scores[j] and i < j) for j in rivals)
                       else 1)
    return np.array(ids)


def _torch_probs(path, arrays):
    hf = transformers.RobertaForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        logits = hf(**{k: torch.tensor(np.asarray(arrays[k]), dtype=torch.long)
                       for k in ("input_ids", "attention_mask")}).logits.double().numpy()
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [line.split("\t") for line in f.read().splitlines()[1:]]


def _check_ranked_file(path, examples, expected):
    rows = _read(path)
    assert [int(r[0]) for r in rows] == [ex.idx for ex in examples]
    assert [r[1] for r in rows] == [LABELS[i] for i in expected]
    for q in {ex.text_a for ex in examples}:  # exactly one entailment per multi-row question
        mine = [r[1] for r, ex in zip(rows, examples) if ex.text_a == q]
        if len(mine) > 1:
            assert mine.count("entailment") == 1, q


def test_finetune_and_ensemble_rank_as_transformers_logits_do(random_hf_roberta, qnli_root,
                                                             tmp_path):
    models = [random_hf_roberta(tmp_path / f"m{s}", head="classifier", labels=LABELS, seed=s)
              for s in range(2)]
    p = finetune.prepare(config_for(qnli_root, init_checkpoint=str(models[0])))
    dev, (_, _, test_examples, test_arrays) = p.eval_sets[0].arrays, p.test_sets[0]
    dev_examples = glue.read_tsv("QNLI", qnli_root, "validation")
    assert sum(1 for ex in dev_examples
               if sum(o.text_a == ex.text_a for o in dev_examples) > 1) >= 40
    gold = dev["labels"]

    def log_odds(probs):
        return np.log(probs[:, 0]) - np.log(probs[:, 1])

    probs = [(_torch_probs(m, dev), _torch_probs(m, test_arrays)) for m in models]
    for members in ([0], [0, 1]):  # one model by finetune, then the two as an ensemble
        dev_p = np.mean([probs[m][0] for m in members], 0)
        test_p = np.mean([probs[m][1] for m in members], 0)
        plain = dev_p.argmax(-1)
        ranked = _ranked_by_hand(log_odds(dev_p), [ex.text_a for ex in dev_examples])
        test_ranked = _ranked_by_hand(log_odds(test_p), [ex.text_a for ex in test_examples])
        assert (ranked != plain).sum() >= 5  # the ranking changes predictions here
        workdir = tmp_path / f"run{len(members)}"
        if len(members) == 1:
            results = finetune.finetune(config_for(qnli_root, init_checkpoint=str(models[0])),
                                        str(workdir))
        else:
            results = ensemble.ensemble(config_for(qnli_root), [str(m) for m in models],
                                        str(workdir))
        assert results == json.load(open(workdir / "results.json"))
        assert results["accuracy"] == pytest.approx(np.mean(plain == gold), abs=1e-9)
        assert results["accuracy_ranking"] == pytest.approx(np.mean(ranked == gold), abs=1e-9)
        assert [r[1] for r in _read(workdir / "dev_predictions.tsv")] == [LABELS[i] for i in plain]
        _check_ranked_file(workdir / "dev_predictions_ranking.tsv", dev_examples, ranked)
        _check_ranked_file(workdir / "submission" / "QNLI.tsv", test_examples, test_ranked)

    # Without config.ranking: the plain argmax, no ranked accuracy, no ranked file.
    results = finetune.finetune(config_for(qnli_root, init_checkpoint=str(models[0]),
                                           ranking=False), str(tmp_path / "plain"))
    assert "accuracy_ranking" not in results
    assert not (tmp_path / "plain" / "dev_predictions_ranking.tsv").exists()
    test_plain = probs[0][1].argmax(-1)
    assert ([r[1] for r in _read(tmp_path / "plain" / "submission" / "QNLI.tsv")]
            == [LABELS[i] for i in test_plain])


# ------------------------------------------------------------------ training: the ranking loss


def test_question_groups_and_train_order(test_data):
    group, rankable = ranking.question_groups(
        ["a", "b", "a", "c", "c", "d", "d", "e"],
        [False, True, True, True, False, True, True, False])
    assert group.tolist() == [0, 1, 0, 2, 2, 3, 3, 4]
    # a and c: several rows, one answer; b, e alone; d has two answers: not ranked
    assert rankable.tolist() == [0, 0, 1, 1, 0, 0, 0, 0]

    examples = glue.read_tsv("QNLI", test_data / "glue", "validation")
    group, _ = ranking.question_groups([ex.text_a for ex in examples])
    for unit in (8, 32):
        order, split = ranking.train_order(group, unit, seed=0, epoch=0)
        assert split == 0 and sorted(order.tolist()) == list(range(len(group)))
        chunk = {}  # every question's rows in one chunk of `unit`
        for pos, row in enumerate(order):
            assert chunk.setdefault(group[row], pos // unit) == pos // unit
    again, _ = ranking.train_order(group, 8, seed=0, epoch=0)
    other, _ = ranking.train_order(group, 8, seed=0, epoch=1)
    assert again.tolist() == ranking.train_order(group, 8, 0, 0)[0].tolist()
    assert other.tolist() != again.tolist()
    # Three questions of 3 rows in chunks of 4: a question must be split, and it is counted.
    order, split = ranking.train_order(np.repeat([0, 1, 2], 3), 4, seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(9)) and split == 2


def test_ranking_loss_by_hand():
    logits = np.array([[1.0, 0.0],    # question 0, log-odds 1, its answer
                       [3.0, 0.0],    # question 0, log-odds 3
                       [0.0, 2.0],    # question 1, log-odds -2, its answer
                       [5.0, 0.0],    # question 1 but padding (weight 0): not a candidate
                       [0.0, 0.0],    # question 1, log-odds 0
                       [4.0, 0.0]],   # question 2 alone: not ranked
                      np.float32)
    batch = {"group": np.array([0, 0, 1, 1, 1, 2]), "weight": np.array([1, 1, 1, 0, 1, 1.0]),
             "rankable": np.array([1, 0, 1, 0, 0, 0], np.float32)}
    expected = (np.log(np.exp(1) + np.exp(3)) - 1) + (np.log(np.exp(-2) + np.exp(0)) + 2)
    got = ranking.loss_sums(logits, LABELS, batch)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # The head's classes the other way round: the same loss.
    assert float(ranking.loss_sums(logits[:, ::-1], LABELS[::-1], batch)) == pytest.approx(
        expected, rel=1e-6)
    import jax
    grad = jax.grad(lambda x: ranking.loss_sums(x, LABELS, batch))(logits)
    assert np.isfinite(grad).all() and not grad[3].any() and not grad[5].any()


def test_finetune_with_the_ranking_loss_trains_on_transformers_loss(random_hf_roberta,
                                                                    qnli_root, tmp_path):
    """Step 1's logged loss (no dropout) is transformers' mean cross-entropy on the batch plus
    0.5 x the mean ranking term over its microbatches, in the order the task drew."""
    root = tmp_path / "glue"
    (root / "QNLI").mkdir(parents=True)
    for name, src in (("train", "dev"), ("dev", "dev")):
        (root / "QNLI" / f"{name}.tsv").write_text((qnli_root / "QNLI" / f"{src}.tsv").read_text())
    model = random_hf_roberta(tmp_path / "m", head="classifier", labels=LABELS, seed=3)
    c = config_for(root, init_checkpoint=str(model), do_train=True, predict_test=False,
                   ranking_loss=0.5, batch_size=16, microbatches=2, max_steps=2, log_every=1,
                   eval_every=-1, dropout=0.0, attention_dropout=0.0)
    p = finetune.prepare(c)
    order = p.task.train_order(p.train, 0)
    rows = order[:16]
    first = {k: v[rows] for k, v in p.train.items()}
    assert first["rankable"].sum() >= 2

    hf = transformers.RobertaForSequenceClassification.from_pretrained(model).eval()
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(first["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(first["attention_mask"],
                                                dtype=torch.long)).logits.double().numpy()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -logp[np.arange(16), first["labels"]].mean()
    odds = logits[:, 0] - logits[:, 1]
    rank = []
    for i in np.flatnonzero(first["rankable"]):
        half = np.arange(16)[(np.arange(16) // 8) == i // 8]        # i's microbatch
        rivals = half[first["group"][half] == first["group"][i]]
        rank.append(np.log(np.exp(odds[rivals]).sum()) - odds[i])

    results = finetune.finetune(c, str(tmp_path / "run"))
    assert results["steps_run"] == 2 and "accuracy_ranking" in results
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    loss1 = next(r["loss"] for r in logged if r.get("step") == 1 and "loss" in r)
    assert loss1 == pytest.approx(ce + 0.5 * np.mean(rank), rel=1e-4)
    assert 0.5 * np.mean(rank) > 1e-3  # the ranking term is a visible part of it
