"""Table 2, SENTENCE-PAIR+NSP (Section 4.2), dynamic masking, BERT-base, batch 256, 1M steps.

    python -m robertax.train --config=configs/paper/table2_sentence_pair.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER

The paper grows the batch for these short inputs so tokens per batch stay about constant;
robertax packs several inputs into each 512-token row instead (segment ids keep them apart), so
the batch of 256 rows already carries about as many tokens as the other formats.
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "sentence_pair"
    return c
