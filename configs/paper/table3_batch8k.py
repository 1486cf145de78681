"""Table 3, batch 8192: BERT-base, 31_000 steps, peak LR 1e-3 (Section 4.3).

Same data passes as batch 256 x 1M steps; reached by gradient accumulation where one device
cannot hold the batch (32 microbatches of 256 by default: --config.microbatches).
    python -m robertax.train --config=configs/paper/table3_batch8k.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "full_sentences"
    c.batch_size = 8192                 # Table 3
    c.microbatches = 32
    c.optim.total_steps = 31_000        # Table 3
    c.optim.peak_learning_rate = 1e-3   # Table 3
    c.optim.b2 = 0.98                 # Section 3.1: β2 0.98 for stability at large batch sizes
    return c
