"""SQuAD v1.1 fine-tuning (Section 5, Table 10). Metrics: exact_match, f1 (selects; percent).

    python -m robertax.finetune --config=configs/finetune/squad_v1.py \
        --config.init_checkpoint=PATH --config.data_dir=squad --workdir=/tmp/squad_v1
(`squad/` holds train-v1.1.json and dev-v1.1.json; or set config.train_file / eval_file.)
The best model's dev answers go to predictions.json, the input of the official
evaluate-v1.1.py. Scoring a fine-tuned model without training: --config.do_train=False.
"""

from configs.finetune import base


def get_config():
    c = base.get_config()
    c.task = "squad"
    c.squad_version = "1.1"
    c.data_dir = "squad"
    c.learning_rate = 1.5e-5        # Table 10: SQuAD
    c.batch_size = 48               # Table 10: SQuAD
    c.num_epochs = 2                # Table 10: SQuAD max epochs 2
    c.weight_decay = 0.01           # Table 10: SQuAD's column (RACE and GLUE: 0.1)
    c.max_length = 512              # Section 5: up to 512 tokens (BERT used 384)
    c.eval_every = -1               # the paper reports the final model (no dev-based selection)
    return c
