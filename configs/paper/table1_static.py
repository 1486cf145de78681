"""Table 1, "static": BERT's static masking (masks fixed at preprocessing, data duplicated 10x).

    python -m robertax.train --config=configs/paper/table1_static.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
Reduced scale (same code path): add e.g. --config.model.num_layers=2 --config.batch_size=16
--config.optim.total_steps=100 --config.data.max_length=128 --config.data.max_predictions=24
--config.model.max_position_embeddings=130.
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "segment_pair"  # Section 4.1 keeps BERT's SEGMENT-PAIR+NSP input
    c.data.masking = "static"
    c.data.dupe_factor = 10         # "duplicated 10 times ... 10 different ways" (Section 4.1)
    return c
