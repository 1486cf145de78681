"""Table 2, FULL-SENTENCES (Section 4.2), dynamic masking, BERT-base, batch 256, 1M steps.

    python -m robertax.train --config=configs/paper/table2_full_sentences.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "full_sentences"
    return c
