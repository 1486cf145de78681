"""WNLI the paper's way (Section 5.1, robertax/tasks/wsc.py): each row's candidate scored by the
masked LM in the pronoun's place against the other candidates for that pronoun. Alignment on
GLUE's real WNLI rows; scores against transformers' RobertaForMaskedLM computed independently
(the substituted text encoded whole by transformers' tokenizer); the losses and the decision by
hand; fine-tuning's first loss, dev accuracy, prediction and leaderboard files end to end."""

import importlib
import json
import re

import numpy as np
import pytest
import torch
import transformers

from robertax import finetune, model as model_lib
from robertax import tokenizer as tokenizer_lib
from robertax.tasks import runner, wsc


def _norm_words(text):
    return [w.strip(".,!?;:\"'()").lower() for w in text.split()]


def test_align_real_wnli_rows(test_data):
    train = wsc.read_wnli(test_data / "glue" / "WNLI" / "train.tsv")
    dev = wsc.read_wnli(test_data / "glue" / "WNLI" / "dev.tsv")
    # Worked by hand from the files.
    s = train[0]  # "... When I pulled the pin out, it had a hole." / "The carrot had a hole."
    assert (s.text[s.start:s.end], s.candidate, s.label) == ("it", "the carrot", 1)
    s = train[3]  # "Steve follows Fred's example in everything. He influences him hugely."
    assert (s.text[s.start:s.end], s.candidate, s.label) == ("He", "Steve", 0)
    s = dev[0]    # "The drain is clogged with hair. It has to be cleaned." / "The hair ..."
    assert (s.text[s.start:s.end], s.candidate) == ("It", "The hair")
    s = dev[6]    # "..., so father gave him a stern look." / "Father gave Timmy a stern look."
    assert (s.text[s.start:s.end], s.candidate) == ("him", "Timmy")
    s = dev[9]    # "... could take his claim away from him." / "... away from anyone."
    assert (s.text[s.start:s.end], s.candidate, s.text[s.end:]) == ("him", "anyone", ".")
    assert dev[30].problem.startswith("the hypothesis repeats no words around any pronoun")
    # Every row that aligns: the hypothesis (without case and clinging punctuation) is a
    # stretch of the sentence with the pronoun replaced by the candidate.
    for split in ("train", "dev"):
        path = test_data / "glue" / "WNLI" / f"{split}.tsv"
        rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
        schemas = train if split == "train" else dev
        assert [str(s.idx) for s in schemas] == [r[0] for r in rows]
        for s, r in zip(schemas, rows):
            if s.problem:
                continue
            assert s.text == r[1] and s.text[s.start:s.end].lower() in wsc.PRONOUNS
            hyp = _norm_words(r[2])
            new = _norm_words(s.text[:s.start] + s.candidate + s.text[s.end:])
            assert any(new[i:i + len(hyp)] == hyp for i in range(len(new))), (s.idx, r[2])
    assert sum(bool(s.problem) for s in train) == 20 and sum(bool(s.problem) for s in dev) == 1
    with pytest.raises(ValueError, match="replaced by 8 words"):
        wsc.align("He came.", "The man who lived next door to us came.")


def test_read_superglue(tmp_path):
    path = tmp_path / "val.jsonl"
    rows = [
        {"idx": 0, "label": True, "text": "The trophy doesn't fit into the brown suitcase "
         "because it is too large.", "target": {"span1_index": 0, "span1_text": "The trophy",
                                                "span2_index": 9, "span2_text": "it"}},
        # span2_index one short, as some of SuperGLUE's rows are; a candidate ending in "."
        {"idx": 1, "label": False, "text": "Mark told Pete many lies about himself, which "
         "Pete included in his book.", "target": {"span1_index": 0, "span1_text": "Mark.",
                                                  "span2_index": 11, "span2_text": "his"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = wsc.read_superglue(path)
    assert (a.text[a.start:a.end], a.candidate, a.label) == ("it", "The trophy", 1)
    assert (b.text[b.start:b.end], b.candidate, b.label, b.idx) == ("his", "Mark", 0, 1)
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"idx": 2, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"val.jsonl:2: not a WSC record \(KeyError"):
        wsc.read_superglue(path)
    rows[0]["target"]["span2_index"] = 3
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"val.jsonl:1: span2_text 'it' is not word 3"):
        wsc.read_superglue(path)


def test_candidates():
    text = "Jim comforted Kevin because he was so upset."
    start = text.index("he was")
    s = [wsc.Schema(0, text, start, start + 2, "Jim", 0),
         wsc.Schema(1, text, start, start + 2, "Kevin", 1),
         wsc.Schema(2, text, start, start + 2, "kevin", 1),        # the same, another case
         wsc.Schema(3, text, start, start + 2, "Jim Smith", 0),    # contains "Jim"
         wsc.Schema(4, "Other text, he", 12, 14, "Bob", 1),        # another text
         wsc.Schema(5, text, -1, -1, "?", 1, problem="no")]
    pool = [wsc.Schema(9, text, start, start + 2, "the boy", None)]
    assert wsc.candidates(s, pool) == [["the boy", "Kevin"], ["the boy", "Jim", "Jim Smith"],
                                       ["the boy", "Jim", "Jim Smith"], ["the boy", "Kevin"],
                                       [], []]


def test_loss_and_decision_by_hand():
    no = model_lib.NO_CANDIDATE
    scores = np.array([[-1.0, -2.0, -0.5],   # referent; beaten by its second other
                       [-1.0, -3.0, no],     # referent; one other (a padding column)
                       [-2.0, -1.0, no],     # not the referent: no loss, still counted
                       [-1.0, no, no],       # referent without others
                       [no, no, no],         # a problem row
                       [-0.1, -5.0, no]],    # padding (weight 0)
                      np.float32)
    batch = {"labels": np.array([1, 1, 0, 1, 1, 1]), "weight": np.array([1, 1, 1, 1, 1, 0.0]),
             "scorable": np.array([1, 1, 1, 1, 0, 1.0])}
    ce = (np.log(np.exp(-1) + np.exp(-2) + np.exp(-0.5)) + 1) + (np.log(np.exp(-1) + np.exp(-3))
                                                                 + 1) + 0.0
    assert float(wsc.loss_sums(scores, batch, "cross_entropy")) == pytest.approx(ce, rel=1e-6)
    margin = ((1 + 5 * (max(0, -2 + 1 + 0.4) + max(0, -0.5 + 1 + 0.4)))
              + (1 + 5 * max(0, -3 + 1 + 0.4)) + 1)
    assert float(wsc.loss_sums(scores, batch, "margin", 5.0, 0.4)) == pytest.approx(margin)
    import jax
    for kind in ("cross_entropy", "margin"):
        grad = np.asarray(jax.grad(lambda x: wsc.loss_sums(x, batch, kind, 5.0, 0.4))(scores))
        assert np.isfinite(grad).all() and grad[0, [0, 2]].all() and grad[1, 0] != 0
        # margin: an other candidate below s - beta adds nothing (-2 and -3 against -1)
        assert (grad[[0, 1], 1] != 0).all() == (kind == "cross_entropy")
        assert not grad[[2, 4, 5]].any() and grad[1, 2] == 0  # label 0, problem, padding
        # the referent without others: cross-entropy over itself alone is 0; margin has -s
        assert grad[3, 0] == pytest.approx(-1.0 if kind == "margin" else 0.0, abs=1e-6)
    assert wsc.predict(scores, batch["scorable"]).tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="'cross_entropy' or 'margin', got 'hinge'"):
        wsc.loss_sums(scores, batch, "hinge")


# ---------------------------------------------------------------- against transformers


@pytest.fixture(scope="module")
def wnli_root(tmp_path_factory, test_data):
    """A GLUE folder of short real WNLI rows (they fit the test model's 64 positions): dev's,
    train's rows of the same sentences, and test = those dev rows unlabelled."""
    root = tmp_path_factory.mktemp("glue")
    (root / "WNLI").mkdir()
    lines = (test_data / "glue" / "WNLI" / "dev.tsv").read_text().splitlines()
    short = [l for l in lines[1:] if len(l.split("\t")[1]) < 110]
    texts = {l.split("\t")[1] for l in short}  # train rows of the same sentences: the
    train = [l for l in (test_data / "glue" / "WNLI" / "train.tsv").read_text().splitlines()[1:]
             if l.split("\t")[1] in texts][:48]  # other candidates for dev's pronouns
    (root / "WNLI" / "train.tsv").write_text("\n".join([lines[0], *train]) + "\n")
    (root / "WNLI" / "dev.tsv").write_text("\n".join([lines[0], *short]) + "\n")
    (root / "WNLI" / "test.tsv").write_text("\n".join(
        ["index\tsentence1\tsentence2", *["\t".join(l.split("\t")[:3]) for l in short]]) + "\n")
    return root


def config_for(root, **kw):
    c = importlib.import_module("configs.finetune.wnli_wsc").get_config()
    c.data_dir, c.max_length, c.eval_batch_size = str(root), 64, 16
    c.progress, c.precision, c.do_train, c.predict_test = False, "float32", False, True
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _torch_scores(path, schemas, others):
    """Each (schema, candidate)'s mean log-probability under transformers' model, from the
    substituted text encoded whole by transformers' RobertaTokenizer (and the text up to the
    candidate's end, to tell its tokens)."""
    tok = transformers.RobertaTokenizer(vocab=str(path / "vocab.json"),
                                        merges=str(path / "merges.txt"))
    hf = transformers.RobertaForMaskedLM.from_pretrained(path).eval()
    out = np.full((len(schemas), 1 + max(map(len, others))), model_lib.NO_CANDIDATE)
    for n, (s, rest) in enumerate(zip(schemas, others)):
        if s.problem:
            continue
        head = s.text[:s.start]
        for j, cand in enumerate([s.candidate, *rest]):
            ids = tok(head + cand + s.text[s.end:])["input_ids"]
            lo = len(tok(head.rstrip())["input_ids"]) - 1 if head.strip() else 1
            hi = len(tok(head + cand)["input_ids"]) - 1
            masked = list(ids)
            masked[lo:hi] = [tok.mask_token_id] * (hi - lo)
            with torch.no_grad():
                logits = hf(input_ids=torch.tensor([masked])).logits[0].double()
            lp = torch.log_softmax(logits, -1).numpy()
            out[n, j] = np.mean([lp[i, ids[i]] for i in range(lo, hi)])
    return out


def test_scores_and_predictions_match_transformers(random_hf_roberta, wnli_root, tmp_path):
    path = random_hf_roberta(tmp_path / "m", seed=4)
    p = finetune.prepare(config_for(wnli_root, init_checkpoint=str(path)))
    dev = wsc.read_wnli(wnli_root / "WNLI" / "dev.tsv")
    others = wsc.candidates(dev, p.task._pool())
    assert sum(len(o) > 0 for o in others) >= 30
    expected = _torch_scores(path, dev, others)
    run = finetune.finetune(config_for(wnli_root, init_checkpoint=str(path)), str(tmp_path / "r"))
    scores = np.asarray(finetune.predict(finetune.predictor(p), p.params, p.mesh,
                                         p.eval_sets[0].arrays, 16))
    np.testing.assert_allclose(scores[:, :expected.shape[1]], expected, rtol=1e-4, atol=1e-4)
    assert p.module.span == 8  # the head ran on 8 positions a row; on all of them, the same:
    every = model_lib.RobertaForCandidateScoring(p.module.config)
    arrays = p.eval_sets[0].arrays
    np.testing.assert_allclose(every.apply({"params": p.params}, arrays["input_ids"][:6],
                                           arrays["attention_mask"][:6]), scores[:6], rtol=1e-5)
    pred = [int(s.problem == "" and all(row[0] >= row[1:len(o) + 1]))
            for s, o, row in zip(dev, others, expected)]
    gold = [s.label for s in dev]
    assert run["accuracy"] == pytest.approx(np.mean(np.array(pred) == gold), abs=1e-9)
    rows = [l.split("\t") for l in (tmp_path / "r" / "dev_predictions.tsv").read_text()
            .splitlines()[1:]]
    assert [int(r[1]) for r in rows] == pred and [int(r[2]) for r in rows] == gold
    sub = [l.split("\t") for l in (tmp_path / "r" / "submission" / "WNLI.tsv").read_text()
           .splitlines()[1:]]
    assert [int(r[1]) for r in sub] == pred and [r[0] for r in sub] == [str(s.idx) for s in dev]
    # Our pieces encode each substituted text exactly as transformers encodes it whole.
    tok = tokenizer_lib.load(str(path))
    ids = p.eval_sets[0].arrays["input_ids"]
    for n, s in enumerate(dev[:12]):
        if not s.problem:
            whole = tok.encode(s.text[:s.start] + s.candidate + s.text[s.end:])
            row = np.where(ids[n, 0, 1] != tok.pad_id, ids[n, 0, 1], ids[n, 0, 0])
            assert row[:len(whole)].tolist() == whole


def test_finetune_first_loss_is_the_cross_entropy_over_candidates(random_hf_roberta, wnli_root,
                                                                  tmp_path):
    path = random_hf_roberta(tmp_path / "m", seed=5)
    c = config_for(wnli_root, init_checkpoint=str(path), do_train=True, predict_test=False,
                   batch_size=8, max_steps=2, log_every=1, eval_every=-1, dropout=0.0,
                   attention_dropout=0.0)
    p = finetune.prepare(c)
    first = next(iter(finetune.batches(p.train, 8, c.seed, 0)))
    train = wsc.read_wnli(wnli_root / "WNLI" / "train.tsv")
    rows = [i for i in range(len(train)) if any(
        (p.train["input_ids"][i] == first["input_ids"][k]).all() for k in range(8))]
    assert len(rows) == 8
    others = wsc.candidates(train, p.task._pool())
    expected = _torch_scores(path, [train[i] for i in rows], [others[i] for i in rows])
    loss, count = [], 0
    for i, e in zip(rows, expected):
        if train[i].problem:
            continue
        count += 1
        if train[i].label == 1:
            valid = e[:len(others[i]) + 1]
            loss.append(np.log(np.exp(valid).sum()) - valid[0])
    assert len(loss) >= 2 and max(loss) > 1e-3
    results = finetune.finetune(c, str(tmp_path / "run"))
    assert results["steps_run"] == 2 and results["task"] == "WSC"
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    loss1 = next(r["loss"] for r in logged if r.get("step") == 1 and "loss" in r)
    assert loss1 == pytest.approx(sum(loss) / count, rel=1e-4)


def test_wsc_refuses_what_cannot_work(random_hf_roberta, wnli_root, tmp_path):
    with pytest.raises(ValueError, match="config.wsc_data='wsc': 'wnli'"):
        runner.make_task(config_for(wnli_root, wsc_data="wsc"))
    with pytest.raises(ValueError, match="config.wsc_loss='hinge'"):
        runner.make_task(config_for(wnli_root, wsc_loss="hinge"))
    with pytest.raises(ValueError, match="config.head='fresh'.* pretrained masked-LM head"):
        runner.make_task(config_for(wnli_root, head="fresh"))
    with pytest.raises(ValueError, match="config.from_mnli='/x'.* pretrained masked-LM head"):
        runner.make_task(config_for(wnli_root, from_mnli="/x"))
    body = random_hf_roberta(tmp_path / "body", head=None)
    with pytest.raises(ValueError, match=re.escape("body: no masked-LM head (mlm_head)")):
        finetune.prepare(config_for(wnli_root, init_checkpoint=str(body)))
    with pytest.raises(FileNotFoundError, match="no wnli dev file"):
        finetune.prepare(config_for(tmp_path, init_checkpoint=str(body)))


def test_pronoun_resolver_scores_as_transformers(random_hf_roberta, tmp_path, capsys):
    from robertax import pronoun
    text = "The _trophy_ doesn't fit into the brown suitcase because [it] is too large."
    clean, start, end, marked = pronoun.parse(text)
    assert (clean[start:end], marked) == ("it", ["trophy"])
    assert clean == "The trophy doesn't fit into the brown suitcase because it is too large."
    for bad, found in (("no pronoun here", 0), ("[He] said [it] was", 2)):
        with pytest.raises(ValueError, match=f"exactly one pronoun in \\[brackets\\], found {found}"):
            pronoun.parse(bad)
    path = random_hf_roberta(tmp_path / "m", seed=6)
    got = pronoun.PronounResolver(str(path)).scores(text, ["the brown suitcase", " ", "trophy"])
    schema = wsc.Schema(0, clean, start, end, "trophy", None)
    want = _torch_scores(path, [schema], [["the brown suitcase"]])[0]
    assert [c for c, _ in got] == [c for _, c in sorted(zip(-want, ["trophy",
                                                                     "the brown suitcase"]))]
    assert dict(got) == pytest.approx(dict(zip(["trophy", "the brown suitcase"], want)),
                                      abs=1e-4)
    with pytest.raises(ValueError, match="no candidates"):
        pronoun.PronounResolver(str(path)).scores("Then [it] fell.")
    pronoun.main(["--model", str(path), "--candidates=the suitcase", text])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == text and len(out) == 3 and out[1].endswith("<- the referent")


def test_superglue_files_score_as_the_same_wnli_rows(random_hf_roberta, wnli_root, tmp_path):
    """The WNLI fixture's rows written in SuperGLUE WSC's jsonl (word index of the pronoun,
    the candidate as span1): the same schemas, so the same dev accuracy and predictions."""
    root = tmp_path / "WSC"
    root.mkdir()
    for split, name in (("train", "train"), ("dev", "val")):
        rows = []
        for s in wsc.read_wnli(wnli_root / "WNLI" / f"{split}.tsv"):
            if not s.problem:
                index = len(s.text[:s.start].split(" ")) - 1
                rows.append({"idx": s.idx, "text": s.text, "label": bool(s.label), "target": {
                    "span1_text": s.candidate, "span1_index": 0, "span2_index": index,
                    "span2_text": s.text[s.start:s.end]}})
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert wsc.read_superglue(root / "val.jsonl") == [
        s for s in wsc.read_wnli(wnli_root / "WNLI" / "dev.tsv") if not s.problem]
    path = random_hf_roberta(tmp_path / "m", seed=7)
    runs = {}
    for data, data_dir in (("wnli", wnli_root), ("superglue", root)):
        runs[data] = finetune.finetune(config_for(data_dir, init_checkpoint=str(path),
                                                  wsc_data=data, predict_test=False),
                                       str(tmp_path / data))
    wnli_rows = [l.split("\t") for l in (tmp_path / "wnli" / "dev_predictions.tsv").read_text()
                 .splitlines()[1:]]
    sg_rows = [l.split("\t") for l in (tmp_path / "superglue" / "dev_predictions.tsv")
               .read_text().splitlines()[1:]]
    problems = {str(s.idx) for s in wsc.read_wnli(wnli_root / "WNLI" / "dev.tsv") if s.problem}
    aligned = [r for r in wnli_rows if r[0] not in problems]
    assert sg_rows == aligned and len(aligned) >= 40 and len(problems) == 1
    assert runs["superglue"]["accuracy"] == pytest.approx(
        np.mean([r[1] == r[2] for r in aligned]), abs=1e-9)
