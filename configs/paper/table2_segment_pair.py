"""Table 2, SEGMENT-PAIR+NSP (Section 4.2), dynamic masking, BERT-base, batch 256, 1M steps.

    python -m robertax.train --config=configs/paper/table2_segment_pair.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "segment_pair"
    return c
