"""Fine-tuning defaults shared by every task: the paper's recipe (Liu et al., 2019, Table 10 and
Section 5), which the per-task files specialize.

    python -m robertax.finetune --config=configs/finetune/<task>.py \
        --config.init_checkpoint=PATH --workdir=DIR [--config.key=value ...]

Numbers from the paper cite it; "fairseq" means fairseq's examples/roberta READMEs (the paper's
released recipes). The rest are engineering choices.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()

    # --- what to fine-tune, on what ---
    c.task = "SST-2"                # a GLUE task name, "squad", "race" or "wsc"
    c.data_dir = "glue_data"        # the task's data folder, or "tfds" (prepared TFDS datasets)
    c.tfds_data_dir = ""            # data_dir="tfds": where they are prepared ("": TFDS_DATA_DIR
                                    # or ~/tensorflow_datasets); see robertax/data/tfds_source.py
    c.train_file = ""               # SQuAD: explicit train JSON (default <data_dir>/train-v*.json)
    c.eval_file = ""                # SQuAD: explicit dev JSON (default <data_dir>/dev-v*.json)
    c.init_checkpoint = ""          # robertax model dir, pretraining or fine-tuning workdir, or
                                    # Hugging Face dir
    c.tokenizer = ""                # "" = the checkpoint's own (see robertax/finetune.py)
    c.from_mnli = ""                # an MNLI fine-tuned model (or its workdir) to start from
                                    # (Section 5: RTE, STS-B and MRPC start from MNLI); its head
                                    # is re-initialized
    c.head = "auto"                 # "auto": reuse a checkpoint head of the right shape; "fresh"
    c.random_init = False           # ablation: the checkpoint's model and tokenizer, random
                                    # weights (fine-tuning without pretraining)
    c.do_train = True               # False: evaluate init_checkpoint as it is (it must hold
                                    # this task's head): dev metrics + prediction files only

    # --- optimization (Table 10) ---
    c.learning_rate = 1e-5          # Table 10: GLUE {1e-5, 2e-5, 3e-5}
    c.batch_size = 32               # Table 10: GLUE {16, 32}
    c.num_epochs = 10               # Table 10: GLUE max epochs 10
    c.max_steps = 0                 # > 0 overrides num_epochs (total steps of the schedule)
    c.warmup_ratio = 0.06           # Table 10: warmup 6% of the steps, then linear decay to 0
    c.weight_decay = 0.1            # Table 10: GLUE and RACE (SQuAD 0.01)
    c.b1 = 0.9                      # Table 10 (Adam β1)
    c.b2 = 0.98                     # Table 10 (Adam β2)
    c.eps = 1e-6                    # Table 10 (Adam ε)
    c.decay_mask = "all"            # fairseq decays every parameter ("no_bias_ln": transformers)
    c.grad_clip_norm = 0.0          # fairseq GLUE recipe: --clip-norm 0.0 (off)
    c.dropout = 0.1                 # Table 10
    c.attention_dropout = 0.1       # Table 10
    c.attention = "auto"            # model.attention: auto (cuDNN flash where it applies, i.e.
                                    # in evaluation on a GPU; else XLA) | xla | cudnn | pallas
                                    # (robertax's fused kernel, with attention dropout)
    c.microbatches = 1              # gradient accumulation inside the step
    c.dropout_rng = "rbg"           # "rbg" (quicker to compile and run) | "threefry" | "unsafe_rbg" | "hash"
    c.precision = "auto"            # auto: bfloat16 on TPU and GPUs from Ampere on, float16 on
                                    # older GPUs, float32 on CPU | float32 | bfloat16 | float16

    # --- inputs ---
    c.max_length = 512              # RoBERTa's maximum (Section 5); cut to the model's positions
    c.pad_to_multiple_of = 32       # each batch cut to its longest row, rounded up to this
                                    # (one compilation per length used); 0: every batch at the
                                    # data's longest row. SQuAD's always are (span logits)
    c.max_train_examples = 0        # > 0: a seeded random subset of train (CPU-scale runs)
    c.max_eval_examples = 0         # > 0: the first N dev examples
    c.data_seed = 0                 # which train subset (fixed across the sweep's seeds)

    # --- SQuAD (used when task = "squad") ---
    c.squad_version = "1.1"
    c.doc_stride = 128              # BERT's run_squad.py default
    c.max_query_length = 64         # BERT's run_squad.py default
    c.max_answer_length = 30        # BERT's run_squad.py default
    c.n_best = 20                   # BERT's run_squad.py default
    c.null_threshold = 0.0          # v2.0: answer "" when logit(no) - logit(yes) exceeds this

    # --- RACE (used when task = "race") ---
    c.max_option_length = 128       # Section 5 (RACE): question + answer truncated to 128 tokens

    # --- WSC (used when task = "wsc"; robertax/tasks/wsc.py, configs/finetune/wnli_wsc.py) ---
    c.wsc_data = "wnli"             # "wnli": GLUE's WNLI folder in data_dir (the leaderboard's
                                    # WNLI.tsv); "superglue": WSC's train/val/test.jsonl there
    c.wsc_loss = "cross_entropy"    # "cross_entropy" over the candidates (fairseq's WSC README)
                                    # | "margin" (Kocijan et al., 2019: the paper's Section 5.1)
    c.wsc_alpha = 5.0               # margin loss: -s + alpha * sum max(0, c - s + beta); 5.0 and
    c.wsc_beta = 0.4                # 0.4 as fairseq's README's margin command

    # --- evaluation and model selection ---
    c.eval_every = 0                # 0: each epoch; K > 0: every K steps; -1: only at the end
    c.early_stopping_patience = 0   # stop after this many evaluations without a better dev
                                    # metric (0: off; the best evaluation is kept either way)
    c.select_metric = ""            # "" = the task's first metric (MRPC f1, STS-B pearson, ...)
    c.eval_batch_size = 64
    c.predict_test = False          # GLUE: leaderboard files in workdir/submission; RACE: test acc
    c.ranking = False               # QNLI only: rank each question's candidate sentences, the
                                    # top one "entailment" (Section 5.1's test formulation):
                                    # QNLI.tsv, dev accuracy_ranking beside the pure accuracy
    c.ranking_loss = 0.0            # QNLI only, > 0: train with this weight on a listwise
                                    # ranking term over each question's candidates too
    c.save_best = True              # the best model to workdir/best (robertax model format)

    c.seed = 0                      # head init, dropout and example order (GLUE: 5 seeds, Sec. 5)
    c.log_every = 50
    c.progress = True               # tqdm bar
    c.overwrite = False             # replace a finished run in the same workdir (its outputs
                                    # are removed once the new run's inputs are all read)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                # data parallel over every device
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c


def glue_config(task: str, learning_rate: float, batch_size: int):
    """A GLUE task with the learning rate / batch size fairseq's README picked from the grid."""
    c = get_config()
    c.task = task
    c.data_dir = "glue_data"        # download_glue_data.py's output folder
    c.learning_rate = learning_rate
    c.batch_size = batch_size
    return c
