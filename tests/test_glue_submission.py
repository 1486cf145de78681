"""tools/glue_submission.py: the eleven GLUE leaderboard files from several runs in one zip,
each file checked (header, indices, label strings, and with the GLUE root its test file's
indices); what is wrong is named by file and line."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from robertax.tasks import glue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import glue_submission  # noqa: E402

WITH_TEST_FILES = ("SST-2", "MRPC", "STS-B", "QNLI", "RTE")  # test files in the shared data


def _predictions(task, n, rng):
    if task.is_regression:
        return rng.uniform(-1, 6, n)  # clipped to 0-5 when written
    return rng.integers(0, len(task.labels), n)


@pytest.fixture()
def runs(tmp_path, test_data):
    """Run a: a fine-tuning workdir's submission/ with the tasks whose test files the shared
    data has, written from those files; run b: a plain folder with the other six."""
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a", tmp_path / "b"
    for name in WITH_TEST_FILES:
        task = glue.get_task(name)
        examples = glue.read_tsv(task, test_data / "glue", "test")
        glue.write_submission(task, "test", _predictions(task, len(examples), rng),
                              a / "submission", [ex.idx for ex in examples])
    for name, split in (("CoLA", "test"), ("QQP", "test"), ("MNLI", "test_matched"),
                        ("MNLI", "test_mismatched"), ("WNLI", "test"), ("AX", "test")):
        task = glue.get_task(name)
        glue.write_submission(task, split, _predictions(task, 5, rng), b)
    return a, b


def test_bundles_all_eleven_files(runs, tmp_path):
    a, b = runs
    out = tmp_path / "glue.zip"
    rows = glue_submission.bundle([str(a), str(b)], str(out))
    assert [r[0] for r in rows] == list(glue.SUBMISSION_FILES)
    assert len(rows) == 11
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == sorted(glue.SUBMISSION_FILES)
        for name, n, path in rows:
            text = open(path, encoding="utf-8").read()
            assert z.read(name).decode("utf-8") == text
            assert n == len(text.splitlines()) - 1
    assert dict((r[0], r[1]) for r in rows)["RTE.tsv"] == 3000


def test_indices_checked_against_the_test_files(runs, test_data, tmp_path):
    a, _ = runs
    out = tmp_path / "part.zip"
    rows = glue_submission.bundle([str(a)], str(out), data_dir=str(test_data / "glue"),
                                  partial=True)
    assert [r[0] for r in rows] == [glue.TASKS[n].submission["test"] for n in WITH_TEST_FILES]
    rte = a / "submission" / "RTE.tsv"
    lines = rte.read_text().splitlines()
    rte.write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # the row for index 4 is gone
    with pytest.raises(ValueError, match=r"RTE.tsv: 2999 predictions for the 3000 rows of "
                                         r"RTE's test file; none for: 4$"):
        glue_submission.bundle([str(a)], str(tmp_path / "x.zip"),
                               data_dir=str(test_data / "glue"), partial=True)
    assert not (tmp_path / "x.zip").exists()


def test_bad_files_are_named(runs, tmp_path):
    a, b = runs
    out = str(tmp_path / "x.zip")
    with pytest.raises(ValueError, match=r"missing 6 of the 11 GLUE files: CoLA.tsv, QQP.tsv, "
                                         r"MNLI-m.tsv, MNLI-mm.tsv, WNLI.tsv, AX.tsv "
                                         r"\(--partial"):
        glue_submission.bundle([str(a)], out)
    (b / "RTE.tsv").write_text("index\tprediction\n0\tentailment\n")
    with pytest.raises(ValueError, match=r"RTE.tsv is in two runs: .*a/submission/RTE.tsv and "
                                         r".*b/RTE.tsv"):
        glue_submission.bundle([str(a), str(b)], out)
    os.remove(b / "RTE.tsv")
    cases = {"RTE.tsv": ("index\tprediction\n0\tentailment\n1\tcontradiction\n",
                         r"RTE.tsv:3: unknown RTE label 'contradiction'"),
             "STS-B.tsv": ("index\tprediction\n0\t7.500\n", r"STS-B.tsv:2: STS-B score 7.5"),
             "MRPC.tsv": ("index\tprediction\n0\t1\n0\t0\n", r"MRPC.tsv:3: index 0 repeats line 2"),
             "QNLI.tsv": ("id\tlabel\n0\t1\n", r"QNLI.tsv:1: expected the header"),
             "SST-2.tsv": ("index\tprediction\n0\t1\textra\n", r"SST-2.tsv:2: expected 2 tab")}
    for name, (text, message) in cases.items():
        path = a / "submission" / name
        good = path.read_text()
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            glue_submission.bundle([str(a), str(b)], out)
        path.write_text(good)
    assert not os.path.exists(out)


def test_command_line(runs, tmp_path):
    a, b = runs
    out = tmp_path / "glue.zip"
    done = subprocess.run([sys.executable, "tools/glue_submission.py", f"--runs={a},{b}",
                           f"--output={out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"11 of 11 files -> {out}"
    assert "RTE.tsv        3,000 rows" in done.stdout
    done = subprocess.run([sys.executable, "tools/glue_submission.py", f"--runs={a}",
                           f"--output={out}.2"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: missing 6 of the 11 GLUE files")
