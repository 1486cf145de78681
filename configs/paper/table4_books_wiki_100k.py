"""Table 4, RoBERTa "BOOKS+WIKI (16GB)": RoBERTa-large, batch 8K, 100_000 steps (Section 5).

Large model (configs/large.py: Table 9's LR 4e-4, 30K warmup, β2 0.98), FULL-SENTENCES,
dynamic masking, byte-level BPE. `config.data.corpus` names the data of this row: "books_wiki" is a
placeholder for your preprocessed shards of that corpus.
    python -m robertax.train --config=configs/paper/table4_books_wiki_100k.py --workdir=DIR \
        --config.data.corpus=SHARDS --config.data.tokenizer=TOKENIZER
"""

from configs.paper import common


def get_config():
    return common.roberta_large_row(total_steps=100_000, corpus="books_wiki")  # Table 4
