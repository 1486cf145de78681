"""tools/paper_study.py: a table of the paper run row by row (pretraining, then the table's tasks
fine-tuned from each row) and tabulated beside the paper's numbers; finished work is reused."""

import json
import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import paper_study  # noqa: E402

TINY = ["model.vocab_size=8192", "model.hidden_size=64", "model.num_layers=1",
        "model.num_heads=4", "model.intermediate_size=128", "model.max_position_embeddings=130",
        "data.max_length=128", "data.max_predictions=24", "data.num_workers=0",
        "precision=float32", "log_every=1", "eval_every=1000", "eval_batches=1",
        "checkpoint_every=1000"]
FINETUNE = ["max_length=64", "max_train_examples=16", "max_eval_examples=16", "max_steps=1",
            "batch_size=8", "eval_batch_size=16", "eval_every=-1", "precision=float32"]


def args_for(workdir, *extra):
    return paper_study.parse_args(
        ["--table=1", f"--workdir={workdir}", "--corpus=builtin", "--tokenizer=builtin",
         "--batch_divisor=16", "--steps_divisor=500000", "--seeds=1", "--in_process",
         *[f"--pretrain_set={s}" for s in TINY], *[f"--finetune_set={s}" for s in FINETUNE],
         *extra])


def test_every_row_has_the_papers_numbers_for_its_columns():
    for table, (_, columns) in paper_study.TABLES.items():
        rows = paper_study.rows_of(table)
        assert len(rows) == {1: 2, 2: 4, 3: 3, 4: 4}[table]
        for row in rows:
            assert set(paper_study.PAPER[row]) == set(columns), row
            assert os.path.exists(paper_study.row_config_path(row)), row
    # spot checks against the paper's tables
    assert paper_study.PAPER["table2_doc_sentences"]["race"] == 65.6
    assert paper_study.PAPER["table3_batch2k"]["ppl"] == 3.68
    assert paper_study.PAPER["table4_pretrain_longer_500k"]["squad_v2"] == 89.4


def test_divisors_keep_table_3_at_equal_compute():
    args = paper_study.parse_args(["--table=3", "--workdir=/unused", "--corpus=SHARDS",
                                   "--batch_divisor=64", "--steps_divisor=1000"])
    got = {}
    for row in paper_study.rows_of(3):
        sets = dict(s.split("=", 1) for s in paper_study.pretrain_overrides(args, row))
        assert sets["data.corpus"] == "SHARDS"
        got[row] = (int(sets["batch_size"]), int(sets["optim.total_steps"]),
                    int(sets["optim.warmup_steps"]), int(sets["microbatches"]))
    # 256 x 1M, 2K x 125K, 8K x 31K divided: 4 x 1000, 32 x 125, 128 x 31 (warmup 10K / 1000);
    # the rows keep their microbatches (1, 8, 32) where they divide the new batch.
    assert got == {"table3_batch256": (4, 1000, 10, 1), "table3_batch2k": (32, 125, 10, 8),
                   "table3_batch8k": (128, 31, 10, 32)}
    with pytest.raises(ValueError, match="does not divide table3_batch256's batch size 256"):
        paper_study.pretrain_overrides(paper_study.parse_args(
            ["--table=3", "--workdir=/x", "--corpus=S", "--batch_divisor=3"]), "table3_batch256")


def test_bad_requests_fail_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="table4_more_data_100k reads corpus 'all_160gb'"):
        paper_study.study(paper_study.parse_args(
            ["--table=4", f"--workdir={tmp_path}", "--corpus=books_wiki=/data/bw",
             "--tasks=sst2", "--glue_dir=/data/glue"]))
    with pytest.raises(ValueError, match="missing --squad_dir for the tasks squad_v2"):
        paper_study.study(args_for(tmp_path, "--glue_dir=/g"))
    with pytest.raises(ValueError, match="race not a column of Table 1"):
        paper_study.study(args_for(tmp_path, "--tasks=race"))
    with pytest.raises(ValueError, match="'table2_doc_sentences' is not a row of Table 1"):
        paper_study.study(args_for(tmp_path, "--rows=table2_doc_sentences"))
    with pytest.raises(ValueError, match="unknown task 'sst'"):
        paper_study.finetune_sets(args_for(tmp_path, "--finetune_set=sst:seed=1"), "sst2")
    assert os.listdir(tmp_path) == []


def test_finetune_sets_apply_to_their_task_only(tmp_path):
    args = args_for(tmp_path, "--glue_dir=G", "--squad_dir=S",
                    "--finetune_set=squad_v2:train_file=T.json", "--finetune_set=seed=3")
    assert paper_study.finetune_sets(args, "sst2") == ["data_dir=G", *FINETUNE, "seed=3"]
    assert paper_study.finetune_sets(args, "squad_v2") == [
        "data_dir=S", *FINETUNE, "train_file=T.json", "seed=3"]


def test_table_1_runs_and_tabulates_at_toy_scale(test_data, tmp_path):
    glue = tmp_path / "glue"
    glue.mkdir()
    os.symlink(test_data / "glue" / "SST-2", glue / "SST-2")
    args = args_for(tmp_path / "study", f"--glue_dir={glue}", "--tasks=sst2")
    result = paper_study.study(args)
    assert [r["row"] for r in result["rows"]] == ["table1_static", "table1_dynamic"]
    for r in result["rows"]:
        pre = tmp_path / "study" / r["row"] / "pretrain"
        with open(pre / "config.json") as f:
            config = json.load(f)
        assert (config["batch_size"], config["optim"]["total_steps"]) == (16, 2)
        assert config["data"]["masking"] == r["row"].split("_")[1]
        evals = [json.loads(line) for line in open(pre / "metrics.jsonl") if "eval_loss" in line]
        assert r["pretrain"]["step"] == evals[-1]["step"] == 2
        assert r["cells"]["ppl"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
        last = [json.loads(line) for line in open(pre / "metrics.jsonl") if '"loss"' in line][-1]
        assert math.isfinite(last["loss"]) and math.isfinite(last["nsp_loss"])  # SEGMENT-PAIR+NSP
        results = json.load(open(tmp_path / "study" / r["row"] / "sst2" / "lr1e-05_bs8" / "seed0"
                                 / "results.json"))
        assert results["init_checkpoint"] == str(pre) and results["train_examples"] == 16
        assert r["cells"]["sst2"] == pytest.approx(100 * results["accuracy"])
        assert "squad_v2" not in r["cells"] and "mnli" not in r["cells"]
    table = (tmp_path / "study" / "study.md").read_text()
    static = result["rows"][0]["cells"]
    assert (f"| table1_static | {static['ppl']:.2f} (-) | - (78.3) | - (84.3) | "
            f"{static['sst2']:.1f} (92.5) |") in table
    assert "| row | ppl | SQuAD 2.0 F1 | MNLI-m | SST-2 |" in table

    # Again: nothing is retrained or fine-tuned anew, and the same table comes out.
    stamps = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "study").rglob("*")
              if p.name in ("metrics.jsonl", "results.json")}
    again = paper_study.study(args)
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    assert [r["cells"] for r in again["rows"]] == [r["cells"] for r in result["rows"]]


def test_a_cell_is_the_median_at_the_grids_best_setting(monkeypatch, tmp_path):
    seen = []
    best = {"learning_rate": 2e-5, "batch_size": 32, "median": {"accuracy": 0.9, "f1": 71.5},
            "scores": {"accuracy": [0.8, 0.9, 0.95], "f1": [70.0, 71.5, 80.0]}}
    monkeypatch.setattr(paper_study.glue_sweep, "sweep",
                        lambda a: seen.append(a) or {"best": best})
    base = ["--table=1", f"--workdir={tmp_path}", "--corpus=C", "--glue_dir=G",
            "--squad_dir=S", "--seeds=3", "--finetune_set=max_steps=5"]
    grid = paper_study.parse_args(base + ["--learning_rates=1e-5,2e-5", "--batch_sizes=16,32"])
    cell = paper_study.finetune_cell(grid, "table1_static", "sst2")
    a = seen[-1]
    assert (a.learning_rates, a.batch_sizes, a.seeds, a.metric) == ((1e-5, 2e-5), (16, 32), 3,
                                                                    "accuracy")
    assert a.init_checkpoint == str(tmp_path / "table1_static" / "pretrain")
    assert a.workdir == str(tmp_path / "table1_static" / "sst2")
    assert a.set == ["data_dir=G", "max_steps=5"]
    assert cell["median"] == pytest.approx(90.0)  # accuracy in percent, as the paper
    assert cell["scores"] == pytest.approx([80.0, 90.0, 95.0])
    assert (cell["learning_rate"], cell["batch_size"]) == (2e-5, 32)
    # Without a grid the cell is the task config's own setting (SQuAD: Table 10's 1.5e-5 x 48).
    cell = paper_study.finetune_cell(paper_study.parse_args(base), "table1_static", "squad_v2")
    a = seen[-1]
    assert (a.learning_rates, a.batch_sizes, a.metric) == ((1.5e-5,), (48,), "f1")
    assert cell["median"] == 71.5 and a.set == ["data_dir=S", "max_steps=5"]


def test_an_unfinished_pretraining_run_is_not_tabulated(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"optim": {"total_steps": 10}}))
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 4, "loss": 7.0}\n{"step": 4, "eval_loss": 6.5}\n')
    with pytest.raises(RuntimeError, match="stopped at step 4 of 10; run the study again"):
        paper_study.pretrain_summary(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 10, "loss": 6.0}\n{"step": 10, "eval_loss": 2.0}\n')
    got = paper_study.pretrain_summary(str(tmp_path))
    assert (got["step"], got["train_loss"], got["ppl"]) == (10, 6.0, pytest.approx(math.exp(2)))


def test_tasks_none_pretrains_only_and_tabulates_perplexity(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(paper_study, "pretrain", lambda args, row: ran.append(row) or {
        "ppl": {"table3_batch256": 4.5, "table3_batch2k": 4.25, "table3_batch8k": 4.0}[row]})
    monkeypatch.setattr(paper_study, "finetune_cell", lambda *a: pytest.fail("fine-tuned"))
    result = paper_study.study(paper_study.parse_args(
        ["--table=3", f"--workdir={tmp_path}", "--corpus=C", "--tasks=none"]))
    assert ran == ["table3_batch256", "table3_batch2k", "table3_batch8k"]
    assert [r["cells"] for r in result["rows"]] == [{"ppl": 4.5}, {"ppl": 4.25}, {"ppl": 4.0}]
    table = (tmp_path / "study.md").read_text()
    assert "| row | ppl | MNLI-m | SST-2 |" in table
    assert "| table3_batch2k | 4.25 (3.68) | - (85.2) | - (92.9) |" in table
