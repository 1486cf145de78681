"""Table 2, DOC-SENTENCES (Section 4.2), dynamic masking, BERT-base, batch 256, 1M steps.

    python -m robertax.train --config=configs/paper/table2_doc_sentences.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER

The paper grows the batch for these short inputs so tokens per batch stay about constant;
robertax packs several inputs into each 512-token row instead (segment ids keep them apart), so
the batch of 256 rows already carries about as many tokens as the other formats.
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "doc_sentences"
    return c
