"""RoBERTa-base pretraining, as in the paper (Liu et al., 2019, Table 9 and Section 4).

    python -m robertax.train --config=configs/base.py --workdir=/tmp/roberta_base \
        --config.data.corpus='/data/books/*.txt'

Every number that comes from the paper cites its table; the rest are engineering choices.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()

    # --- model (maps onto robertax.model.RobertaConfig) ---
    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 50265          # GPT-2's 50K byte-level BPE in fairseq's id layout (Section 4.4)
    m.hidden_size = 768           # Table 9 / BERT-base
    m.num_layers = 12
    m.num_heads = 12
    m.intermediate_size = 3072
    m.max_position_embeddings = 514  # 512 tokens + pad offset (positions start at pad_id + 1 = 2)
    m.type_vocab_size = 1
    m.pad_token_id = 1
    m.layer_norm_eps = 1e-5
    m.dropout_rate = 0.1          # Table 9
    m.attention_dropout_rate = 0.1  # Table 9
    m.initializer_range = 0.02
    m.pad_vocab_to = 128          # vocabulary padded to a multiple of this (speed); sliced on export
    m.attention = "auto"          # "auto" | "xla" | "cudnn": auto picks cuDNN flash on GPU if it applies
    #                               "pallas": robertax's fused kernel, with attention dropout
    m.remat = "none"              # "none" | "full" | "dots": rematerialization per layer
    m.scan_unroll = 0             # layers per scan iteration; 0: all (unrolled: 1.42x on an H100)
    m.fused_qkv = False           # Q, K, V from one matrix product (same parameters and math)
    m.gelu_approximate = False    # tanh GELU: a speed knob only (RoBERTa's checkpoints use erf)
    m.layer_norm_vjp = False      # LayerNorm with a hand-written backward (same math; a speed knob)
    m.attention_vjp = False       # XLA attention through robertax's own core and backward (a speed knob)
    m.fold_attention_biases = False  # no key/value bias additions, the same math (a speed knob)
    m.fused_norm = False          # residual add + dropout + LayerNorm in one Pallas kernel (a speed knob)
    m.gather_onehot = True        # MLM positions picked by a one-hot product (exact; False: take_along_axis)
    m.cpu_matmul = "xla"          # on the CPU: "xla" | "mkl" (Intel MKL; `pip install mkl`, a C++ compiler)

    # --- data (robertax.data) ---
    c.data = d = ml_collections.ConfigDict()
    d.corpus = "builtin"          # "builtin", a preprocessed shard dir, or text globs to preprocess
    d.tokenizer = "builtin"       # "builtin" or a tokenizer dir/files (robertax.tokenizer.load)
    d.shard_dir = ""              # where preprocessed shards live ("" → <workdir>/../cache)
    d.format = "full_sentences"   # Section 4.2: full_sentences | doc_sentences | segment_pair | sentence_pair
    d.max_length = 512            # Table 9
    d.masking = "dynamic"         # Section 4.1: dynamic | static
    d.dupe_factor = 10            # static masking: 10 masks per sequence (Section 4.1)
    d.mask_prob = 0.15            # Section 2.3 (BERT): 15% of tokens selected
    d.mask_token_prob = 0.8       # ... of which 80% <mask>
    d.random_token_prob = 0.1     # ... 10% random token (the remaining 10% unchanged)
    d.mask_count = "exact"        # "exact" (fairseq: round(p * n) per sequence) | "independent"
    d.whole_word_mask = False
    # Capacity of the gathered MLM head per row: by default the most that "exact" masking can
    # choose, floor(mask_prob * (max_length - 2)) + 1 (77 at 512), following max_length and
    # mask_prob when they are overridden; set it to raise it (independent or whole-word masking).
    d.max_predictions = ((d.get_ref("max_length") - 2) * d.get_ref("mask_prob")).to_int() + 1
    d.max_inputs_per_row = 16     # sentence_pair: pairs packed per row (NSP capacity; ~64-token
                                  # pairs, 8 a row on average, so 16 rarely binds)
    d.seed = 0
    d.num_workers = 2             # Grain worker processes (0: in-process)
    d.valid_fraction = 0.01       # documents held out for validation when preprocessing

    # --- optimization (robertax.optim) ---
    c.optim = o = ml_collections.ConfigDict()
    o.peak_learning_rate = 6e-4   # Table 9 (base)
    o.warmup_steps = 24_000       # Table 9 (base)
    o.total_steps = 500_000       # Table 9
    o.b1 = 0.9                    # Table 9
    o.b2 = 0.98                   # Table 9 (BERT used 0.999; 0.98 for stability at large batch)
    o.eps = 1e-6                  # Table 9
    o.weight_decay = 0.01         # Table 9
    o.decay_mask = "all"          # "all" (fairseq: every parameter) | "no_bias_ln" (transformers)
    o.grad_clip_norm = 0.0        # Table 9: no gradient clipping (0 = off)

    c.batch_size = 8192           # Table 9: 8K sequences per step
    c.microbatches = 32           # gradient accumulation: 8192 / 32 = 256 sequences per micro-step
    c.precision = "bfloat16"      # "float32" | "bfloat16" | "float16" (dynamic loss scaling)

    # --- parallelism (robertax.sharding) ---
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1              # -1: all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # --- loop ---
    c.seed = 0
    c.dropout_rng = "threefry"    # "threefry" | "rbg" (far faster on GPU) | "hash" (robertax.hash_rng)
    c.log_every = 100
    c.eval_every = 2000
    c.eval_batches = 50           # held-out batches of batch_size rows (microbatches at a time)
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    return c
