"""Table 1, "dynamic": a new mask every time a sequence is fed to the model (RoBERTa's).

    python -m robertax.train --config=configs/paper/table1_dynamic.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    c = common.bert_base_recipe()
    c.data.format = "segment_pair"  # Section 4.1 keeps BERT's SEGMENT-PAIR+NSP input
    c.data.masking = "dynamic"
    return c
