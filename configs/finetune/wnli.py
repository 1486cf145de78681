"""GLUE WNLI fine-tuning. Metric: accuracy. (The paper's WNLI entry uses a WSC-style ranking model
instead, Section 5; this is the plain classifier baseline.)

    python -m robertax.finetune --config=configs/finetune/wnli.py \
        --config.init_checkpoint=PATH --config.data_dir=glue_data --workdir=/tmp/wnli
The paper's grid is LR {1e-5, 2e-5, 3e-5} x batch {16, 32} x 5 seeds: tools/glue_sweep.py.
"""

from configs.finetune import base


def get_config():
    # fairseq's README gives no WNLI row: LR 1e-5 and batch 16 are the smallest of the
    # Table 10 grid; 10 epochs max, 6% warmup, weight decay 0.1 from base.py.
    c = base.glue_config("WNLI", learning_rate=1e-5, batch_size=16)
    return c
