"""GLUE SST-2 fine-tuning. Metric: accuracy.

    python -m robertax.finetune --config=configs/finetune/sst2.py \
        --config.init_checkpoint=PATH --config.data_dir=glue_data --workdir=/tmp/sst2
The paper's grid is LR {1e-5, 2e-5, 3e-5} x batch {16, 32} x 5 seeds: tools/glue_sweep.py.
"""

from configs.finetune import base


def get_config():
    # LR 1e-5 and batch 32: fairseq examples/roberta/README.glue.md's choice from the grid
    # (Table 10); 10 epochs max, 6% warmup, weight decay 0.1 from base.py.
    c = base.glue_config("SST-2", learning_rate=1e-5, batch_size=32)
    return c
