"""Shared settings of the paper's ablations (Section 4): BERT-base trained as in BERT.

Tables 1-3 "pretrain BERT_BASE ... for 1M steps with a batch size of 256 sequences" on
BookCorpus + Wikipedia (16GB), with BERT's optimization hyperparameters (Section 3.1; Adam
β2 0.999 for these small-batch runs, peak LR 1e-4, 10K warmup steps).
"""

from configs import base


def bert_base_recipe(corpus="books_wiki"):
    c = base.get_config()
    c.data.corpus = corpus        # point at your preprocessed BookCorpus + Wikipedia shards
    c.data.tokenizer = "roberta"  # set to the tokenizer dir the shards were made with
    c.batch_size = 256            # Section 4: batch 256
    c.microbatches = 1
    c.optim.total_steps = 1_000_000  # Section 4: 1M steps
    c.optim.peak_learning_rate = 1e-4  # BERT's
    c.optim.warmup_steps = 10_000      # BERT's
    c.optim.b2 = 0.999                 # BERT's (RoBERTa's 0.98 is for large batches)
    return c


def roberta_large_row(total_steps: int, corpus: str):
    """Table 4's RoBERTa rows: RoBERTa-large (Table 9), batch 8K, FULL-SENTENCES, dynamic
    masking; `corpus` names the row's data (a placeholder for your preprocessed shards)."""
    from configs import large
    c = large.get_config()
    c.data.corpus = corpus
    c.data.tokenizer = "roberta"  # set to the tokenizer dir the shards were made with
    c.batch_size = 8192           # Table 4 / Table 9
    c.optim.total_steps = total_steps
    return c
