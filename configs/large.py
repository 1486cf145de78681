"""RoBERTa-large pretraining, as in the paper (Table 9): 24 layers, 1024 hidden, 16 heads.

    python -m robertax.train --config=configs/large.py --workdir=/tmp/roberta_large

At CPU scale, through the same code path:

    python -m robertax.train --config=configs/large.py --workdir=/tmp/large_small \
        --config.model.num_layers=2 --config.model.hidden_size=64 --config.model.num_heads=4 \
        --config.model.intermediate_size=128 --config.model.vocab_size=8192 \
        --config.batch_size=8 --config.microbatches=2 --config.data.max_length=128 \
        --config.optim.total_steps=20 --config.optim.warmup_steps=2 --config.log_every=5 \
        --config.precision=float32
"""

from configs import base


def get_config():
    c = base.get_config()
    c.model.hidden_size = 1024         # Table 9 / BERT-large
    c.model.num_layers = 24
    c.model.num_heads = 16
    c.model.intermediate_size = 4096
    c.optim.peak_learning_rate = 4e-4  # Table 9 (large)
    c.optim.warmup_steps = 30_000      # Table 9 (large)
    return c
