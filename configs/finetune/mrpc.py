"""GLUE MRPC fine-tuning. Metrics: f1 (selects), accuracy. Section 5: may start from the MNLI
model (config.from_mnli).

    python -m robertax.finetune --config=configs/finetune/mrpc.py \
        --config.init_checkpoint=PATH --config.data_dir=glue_data --workdir=/tmp/mrpc
The paper's grid is LR {1e-5, 2e-5, 3e-5} x batch {16, 32} x 5 seeds: tools/glue_sweep.py.
"""

from configs.finetune import base


def get_config():
    # LR 1e-5 and batch 16: fairseq examples/roberta/README.glue.md's choice from the grid
    # (Table 10); 10 epochs max, 6% warmup, weight decay 0.1 from base.py.
    c = base.glue_config("MRPC", learning_rate=1e-5, batch_size=16)
    return c
