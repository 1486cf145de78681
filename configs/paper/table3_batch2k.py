"""Table 3, batch 2048: BERT-base, 125_000 steps, peak LR 7e-4 (Section 4.3).

Same data passes as batch 256 x 1M steps; reached by gradient accumulation where one device
cannot hold the batch (8 microbatches of 256 by default: --config.microbatches).
    python -m robertax.train --config=configs/paper/table3_batch2k.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "full_sentences"
    c.batch_size = 2048                 # Table 3
    c.microbatches = 8
    c.optim.total_steps = 125_000        # Table 3
    c.optim.peak_learning_rate = 7e-4   # Table 3
    c.optim.b2 = 0.98                 # Section 3.1: β2 0.98 for stability at large batch sizes
    return c
