"""tools/pretrain_helps.py's report: each initialization's score at a learning rate is the median
over the fine-tuning seeds, the best learning rate is chosen by that median, every seed runs in
its own directory, and "pretraining helps" holds only when the pretrained median beats both the
random-weights median and the majority class. (The runs themselves are faked here; the commands
they stand for are tested in test_finetune.py.)"""

import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import pretrain_helps  # noqa: E402

# dev accuracy by (random init, learning rate, seed)
ACCURACY = {
    (False, 1e-4, 0): 0.70, (False, 1e-4, 1): 0.90, (False, 1e-4, 2): 0.71,  # median 0.71
    (False, 1e-3, 0): 0.72, (False, 1e-3, 1): 0.60, (False, 1e-3, 2): 0.73,  # median 0.72
    (True, 1e-4, 0): 0.69, (True, 1e-4, 1): 0.69, (True, 1e-4, 2): 0.99,    # median 0.69
    (True, 1e-3, 0): 0.65, (True, 1e-3, 1): 0.66, (True, 1e-3, 2): 0.67,    # median 0.66
}


def test_report_takes_medians_over_seeds(monkeypatch, tmp_path, test_data):
    runs = []

    def finetune(args, init, name, n, lr, seed, random_init):
        runs.append(pretrain_helps.run_name(name, n, lr, seed))
        return {"accuracy": ACCURACY[random_init, lr, seed], "train_examples": n,
                "eval_examples": {"dev": 872}}

    monkeypatch.setattr(pretrain_helps, "pretrain", lambda args, name, steps: "/pretrained")
    monkeypatch.setattr(pretrain_helps, "last_eval",
                        lambda workdir: {"eval_loss": 3.5, "eval_accuracy": 0.4})
    monkeypatch.setattr(pretrain_helps, "finetune", finetune)
    summary = pretrain_helps.main([
        f"--workdir={tmp_path}", f"--glue_dir={test_data / 'glue'}", "--corpus=enwiki:100",
        "--train_examples=100", "--learning_rates=1e-4,1e-3", "--seeds=0,1,2"])

    assert len(set(runs)) == len(runs) == 12  # 2 inits x 2 learning rates x 3 seeds
    sub = summary["subsets"]["100"]
    ours, theirs = sub["rows"]["pretrained on enwiki (100 steps)"], sub["rows"]["random init (enwiki tokenizer)"]
    assert ours["best_lr"] == 1e-3 and np.isclose(ours["best"], 0.72)  # not 1e-4's mean 0.77
    assert ours["best_by_seed"] == [0.72, 0.60, 0.73]
    assert theirs["best_lr"] == 1e-4 and np.isclose(theirs["best"], 0.69)
    assert 0.4 < sub["majority"] < 0.6
    assert sub["holds"] == {"enwiki": True}
    assert os.path.exists(tmp_path / "summary.json")


def test_finished_steps_are_reused_only_for_the_same_command(monkeypatch, tmp_path):
    """A fine-tuning run of other settings runs again; a pretraining workdir made by another
    command is refused rather than resumed with a second recipe."""
    ran = []

    def sh(cmd, log):  # stands for the command: writes what it would leave behind
        ran.append(cmd)
        workdir = next(c.split("=", 1)[1] for c in cmd if c.startswith("--workdir="))
        os.makedirs(workdir, exist_ok=True)
        if "robertax.finetune" in cmd:
            with open(os.path.join(workdir, "results.json"), "w") as f:
                f.write('{"accuracy": 0.5}')
        else:
            steps = next(c.split("=")[1] for c in cmd if "total_steps" in c)
            os.makedirs(os.path.join(workdir, "checkpoints", steps))

    monkeypatch.setattr(pretrain_helps, "sh", sh)
    monkeypatch.setattr(pretrain_helps, "corpus_flags", lambda args, corpus: [])
    args = pretrain_helps.argparse.Namespace(workdir=str(tmp_path), glue_dir="glue", epochs=10,
                                             batch_size=16, finetune_flag=None,
                                             pretrain_lr=1e-3, train_flag=None)
    for epochs in (10, 10, 3):
        args.epochs = epochs
        assert pretrain_helps.finetune(args, "/init", "x", 100, 1e-3, 0, False) == {
            "accuracy": 0.5}
    assert [c for cmd in ran for c in cmd if "num_epochs" in c] == [
        "--config.num_epochs=10", "--config.num_epochs=3"]  # the second call reused the first

    ran.clear()
    for _ in range(2):
        pretrain_helps.pretrain(args, "enwiki:100", 100)
    assert len(ran) == 1
    args.pretrain_lr = 3e-3
    with pytest.raises(SystemExit, match=r"another command(.|\n)*peak_learning_rate=0\.003"):
        pretrain_helps.pretrain(args, "enwiki:100", 100)
    assert len(ran) == 1
