"""Table 3, batch 256: BERT-base, 1M steps, peak LR 1e-4 (Section 4.3).

Section 4.3 keeps the number of passes over the data fixed while the batch grows (256 x 1M =
2K x 125K = 8K x 31K sequences) and tunes the LR per batch size. FULL-SENTENCES, as Section 4.2
settles on for the rest of the paper. Compare held-out perplexity (`eval_perplexity` in
metrics.jsonl) and fine-tuned MNLI-m / SST-2.
    python -m robertax.train --config=configs/paper/table3_batch256.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "full_sentences"
    c.batch_size = 256                 # Table 3
    c.optim.total_steps = 1_000_000    # Table 3
    c.optim.peak_learning_rate = 1e-4  # Table 3
    return c
