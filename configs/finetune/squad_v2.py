"""SQuAD v2.0 fine-tuning (Section 5, Table 10): span prediction plus a binary "answerable"
classifier trained jointly (the two losses summed). Metrics: exact_match, f1 (selects;
percent), HasAns_*, NoAns_*. Writes predictions.json (id -> answer, "" for none) and
null_odds.json (id -> no-answer score) for the official evaluate-v2.0.py (--na-prob-file).

    python -m robertax.finetune --config=configs/finetune/squad_v2.py \
        --config.init_checkpoint=PATH --config.data_dir=squad --workdir=/tmp/squad_v2
"""

from configs.finetune import squad_v1


def get_config():
    c = squad_v1.get_config()
    c.squad_version = "2.0"         # Section 5: SQuAD 2.0 adds the answerable classifier
    return c
