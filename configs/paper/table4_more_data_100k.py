"""Table 4, RoBERTa "+additional data (160GB)": RoBERTa-large, batch 8K, 100_000 steps (Section 5).

Large model (configs/large.py: Table 9's LR 4e-4, 30K warmup, β2 0.98), FULL-SENTENCES,
dynamic masking, byte-level BPE. `config.data.corpus` names the data of this row: "all_160gb" is a
placeholder for your preprocessed shards of that corpus.
    python -m robertax.train --config=configs/paper/table4_more_data_100k.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    return common.roberta_large_row(total_steps=100_000, corpus="all_160gb")  # Table 4
