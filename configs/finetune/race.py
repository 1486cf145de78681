"""RACE fine-tuning (Section 5, Table 10): each (passage, question, option) encoded separately,
the <s> vector -> linear -> softmax over the four options. Metrics: accuracy (selects),
accuracy_middle, accuracy_high; with predict_test also test_accuracy*, the numbers of Table 7
(over the first max_eval_examples test questions when that is set: results.json's
test_examples). Writes dev_predictions.json / test_predictions.json (question id -> A-D).
On a model with fewer positions max_length shrinks to fit and max_option_length with it.

    python -m robertax.finetune --config=configs/finetune/race.py \
        --config.init_checkpoint=PATH --config.data_dir=RACE --workdir=/tmp/race
(`RACE/` is the release's folder with train/dev/test, each with high/ and middle/.)
"""

from configs.finetune import base


def get_config():
    c = base.get_config()
    c.task = "race"
    c.data_dir = "RACE"
    c.learning_rate = 1e-5          # Table 10: RACE
    c.batch_size = 16               # Table 10: RACE
    c.num_epochs = 4                # Table 10: RACE max epochs 4
    c.max_length = 512              # Section 5: total length at most 512 tokens
    c.max_option_length = 128       # Section 5: question + answer truncated to 128 tokens
    c.eval_every = -1               # the paper reports the final model
    c.predict_test = True           # RACE's test answers are public: report test accuracy too
    return c
