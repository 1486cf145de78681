"""Every row of the paper's Tables 1-4 is a config, and runs at reduced scale through the same
code path as the full run."""

import glob
import importlib.util
import math
import os

import pytest

from robertax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = sorted(glob.glob(os.path.join(REPO, "configs", "paper", "table*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def by_name(name):
    return load(os.path.join(REPO, "configs", "paper", name + ".py"))


def test_rows_match_the_paper():
    assert len(PAPER) == 13
    t1s, t1d = by_name("table1_static"), by_name("table1_dynamic")
    assert (t1s.data.masking, t1s.data.dupe_factor, t1d.data.masking) == ("static", 10, "dynamic")
    formats = {by_name(f"table2_{f}").data.format for f in
               ("segment_pair", "sentence_pair", "full_sentences", "doc_sentences")}
    assert formats == {"segment_pair", "sentence_pair", "full_sentences", "doc_sentences"}
    for name, bsz, steps, lr in (("table3_batch256", 256, 1_000_000, 1e-4),
                                 ("table3_batch2k", 2048, 125_000, 7e-4),
                                 ("table3_batch8k", 8192, 31_000, 1e-3)):
        c = by_name(name)
        assert (c.batch_size, c.optim.total_steps, c.optim.peak_learning_rate) == (bsz, steps, lr)
        assert c.model.hidden_size == 768 and c.batch_size % c.microbatches == 0
    for name, steps in (("table4_books_wiki_100k", 100_000), ("table4_more_data_100k", 100_000),
                        ("table4_pretrain_longer_300k", 300_000),
                        ("table4_pretrain_longer_500k", 500_000)):
        c = by_name(name)
        assert (c.model.hidden_size, c.model.num_layers, c.batch_size) == (1024, 24, 8192)
        assert c.optim.total_steps == steps and c.optim.peak_learning_rate == 4e-4


def shrink(c, steps=2):
    c.data.corpus, c.data.tokenizer = "builtin", "builtin"
    c.model.vocab_size = 8192
    c.model.hidden_size, c.model.num_layers, c.model.num_heads = 64, 1, 4
    c.model.intermediate_size = 128
    c.model.max_position_embeddings = 130
    c.data.max_length, c.data.max_predictions = 128, 24
    c.data.num_workers = 0
    c.batch_size, c.microbatches = 16, 2  # 8 rows per microbatch: one per fake device
    c.optim.total_steps, c.optim.warmup_steps = steps, 1
    c.precision = "float32"
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 1, 1000, 1, 1000
    return c


@pytest.mark.parametrize("name", ["table2_sentence_pair", "table4_books_wiki_100k"])
def test_row_runs_at_reduced_scale(name, tmp_path):
    """(Table 1's two rows run at reduced scale in tests/test_paper_study.py.)"""
    c = shrink(by_name(name))
    result = train.train(c, str(tmp_path))
    last = result["last"]
    assert result["steps"] == 2 and math.isfinite(last["loss"])
    if c.data.format in train.NSP_FORMATS:  # the NSP head trains alongside MLM
        assert math.isfinite(last["nsp_loss"]) and 0.0 <= last["nsp_accuracy"] <= 1.0
    else:
        assert "nsp_loss" not in last


def test_finetuning_configs_follow_table_10():
    """Table 10 (RoBERTa-large fine-tuning), column by column: learning rate, batch size,
    weight decay, max epochs, warmup ratio; Adam beta2 0.98 and eps 1e-6 as in pretraining."""
    def ft(name):
        return load(os.path.join(REPO, "configs", "finetune", name + ".py"))

    rows = {"race": (1e-5, 16, 0.1, 4), "squad_v1": (1.5e-5, 48, 0.01, 2),
            "squad_v2": (1.5e-5, 48, 0.01, 2)}
    rows.update({t: (None, None, 0.1, 10) for t in ("cola", "sst2", "mrpc", "stsb", "qqp",
                                                     "mnli", "qnli", "rte", "wnli")})
    for name, (lr, batch, decay, epochs) in rows.items():
        c = ft(name)
        if lr is not None:  # GLUE: a grid, {1e-5, 2e-5, 3e-5} x {16, 32} (tools/glue_sweep.py)
            assert (c.learning_rate, c.batch_size) == (lr, batch), name
        else:
            assert c.learning_rate in (1e-5, 2e-5, 3e-5) and c.batch_size in (16, 32), name
        assert (c.weight_decay, c.num_epochs, c.warmup_ratio) == (decay, epochs, 0.06), name
        assert (c.b1, c.b2, c.eps) == (0.9, 0.98, 1e-6), name
