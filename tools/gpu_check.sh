#!/usr/bin/env bash
# One prepared GPU session (< 10 minutes): install the carried wheels, check the fast paths'
# numerics, then time RoBERTa-base and -large (robertax and transformers) and print one table.
#   bash tools/gpu_check.sh [items...]   (no items: the default list below)
# items: correct (tools/gpu_correctness.py, every check) or its groups as items of their own:
#   correct_cudnn (bf16 and cuDNN against float32 and transformers), correct_pallas (the fused
#   attention-dropout kernel), correct_switches, correct_norm (model.fused_norm); profile_base
#   (base timing + a profile table; the trace and the compiled HLO land in $OUT); base large
#   torch_base torch_large base_b256 large_b96 large_b128 (H200: 61.5 GB estimated);
#   switches: base_scan large_scan (model.scan_unroll=1, the layer loop not unrolled)
#   base_fused (model.fused_qkv) base_tanh (model.gelu_approximate) base_lnvjp large_lnvjp
#   (model.layer_norm_vjp) base_fold large_fold (model.fold_attention_biases) base_take
#   (model.gather_onehot=false) base_hash large_hash (dropout_rng=hash) base_fold_hash
#   large_fold_hash (both switches) large_b96_fold_hash base_b256_fold_hash
#   base_acc_fold_hash large_acc_fold_hash (8 accumulated microbatches a step)
#   base_fused_norm large_fused_norm base_b256_fused_norm (model.fused_norm with both switches)
#   base_fused_norm_notriton base_b256_fused_norm_notriton large_fused_norm_notriton (the same,
#   the products without Triton)
#   base_nodrop base_threefry;
#   XLA flags: base_notriton base_cublaslt base_tanh_cublaslt base_cudnn_ln base_triton_any
#   base_heroless (each named below); the paper's attention dropout
#   (XLA attention): base_xla large_xla, with hash dropout base_xla_hash large_xla_hash, and
#   through model.attention_vjp: base_xla_vjp
#   large_xla_vjp; the paper's attention dropout through robertax's fused Triton kernel
#   (model.attention=pallas, hash dropout): base_pallas large_pallas, and its kernel alone against
#   cuDNN and XLA (tools/bench_attention.py): attn; profile_large; train.
# Every robertax row uses bf16, the unrolled layer loop, cuDNN flash attention and rbg dropout
# unless its label says otherwise.
# GPU_CHECK_BUDGET_S (default 540): items that would start after it are skipped. Measured on an
# H100 (2026-11-26): correct (then without the pallas checks) cut at 240 s before its cuDNN
# checks, an unrolled base item ~70 s, large ~115 s, torch_base ~65 s, torch_large ~130 s
# (torch.compile). The default list is in priority order (about 400 s before `correct_cudnn`,
# which then gets the ~140 s left): the base and large timings
# the issue lacks, with base's PyTorch baseline in the same run, the unrolled step's profile,
# the two untested switches that the CPU-side screen (tools/gpu_aot.py) expects to help most,
# together (fold_attention_biases, an estimated -2.5% step time; dropout_rng=hash, -4.6%;
# both -7.2%), then with them model.fused_norm (-4.5% more), then the cuDNN correctness
# checks and fused_norm's, then base at batch 256 with all three and the products left to
# cuBLAS (the one base estimate projected past 1,300), then the fused attention-dropout kernel's
# checks, that kernel alone against cuDNN and XLA (attn, ~1 minute estimated, unmeasured) and in
# the paper's recipe (base_pallas), then large at batch 96 with both (the one estimate
# projected past 390 seq/s), then each switch alone; the attention-dropout row
# and the switches the screen expects to slow the step (layer_norm_vjp +3.8%, attention_vjp
# +15%: measure them to confirm) in a second call if time is left.
# Wheels (grain, array_record, ml_collections, tensorboardX, portpicker) are expected in .whl/
# (`bash tools/gpu_wheels.sh` fetches them; carry [".whl"]).
# GPU_CHECK_TINY=1: a rehearsal on the CPU before spending device time. Every item runs with a
# 2-layer, width-64 model on 8 x 64 tokens for 2 steps, `correct` runs --small, and the XLA
# flags are parsed by the local jaxlib (an unknown flag aborts the item): it checks the items'
# flags, config keys and the summary, not speed (tests/test_perf.py runs a few items this way).
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if [ "${GPU_CHECK_TINY:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# XLA preallocates 75% of the card by default (60 GB of an 80 GB H100): let it use 95%.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
TINY=()
if [ "${GPU_CHECK_TINY:-0}" = 1 ]; then
  TINY=(--steps=2 --warmup=1 --config.model.hidden_size=64 --config.model.num_layers=2
        --config.model.num_heads=2 --config.model.intermediate_size=128
        --config.data.max_length=64 --config.batch_size=8)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
items=${*:-profile_base large torch_base base_fold_hash base_fused_norm correct_cudnn correct_norm base_b256_fused_norm_notriton correct_pallas attn base_pallas large_b96_fold_hash large_fused_norm large_acc_fold_hash base_b256_fused_norm base_fused_norm_notriton large_fused_norm_notriton base_fold base_hash large_fold_hash base_b256_fold_hash large_fold base_xla base_xla_hash large_pallas correct_switches base_take base_lnvjp base_xla_vjp torch_large base_b256 base_tanh_cublaslt base_nodrop base_cublaslt large_xla}
J="$OUT/bench.jsonl"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-540}))  # items that would start past it are skipped
B="python3 tools/bench_train.py --json_out=$J --steps=10 --warmup=2"
BASE="--config=configs/base.py --config.batch_size=128 --config.microbatches=1 --config.precision=bfloat16"
LARGE="--config=configs/large.py --config.batch_size=64 --config.microbatches=1 --config.precision=bfloat16"
FAST="--config.model.attention_dropout_rate=0 --config.dropout_rng=rbg"  # cuDNN flash, rbg dropout
run() {
  local t=$1; shift; local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 30 ]; then echo "== skipped (budget): $*" >&2; return; fi
  [ "$t" -gt "$left" ] && t=$left
  case "$*" in *bench_train.py*) set -- "$@" ${TINY[@]+"${TINY[@]}"} ;;
    *gpu_correctness.py*) [ ${#TINY[@]} -gt 0 ] && set -- "$@" --small ;;
    *bench_attention.py*) [ ${#TINY[@]} -gt 0 ] && set -- "$@" --batch=2 --length=64 --heads=2 --reps=2 ;;
    *robertax.train*) [ ${#TINY[@]} -gt 0 ] && set -- "$@" --config.optim.total_steps=4 \
      --config.data.num_workers=0 ;;
  esac
  echo "== [$SECONDS s] $*" >&2
  timeout "$t" "$@" 2>&1 | grep -vE "^(W|I)[0-9]{4} |Warning|warn" | tee -a "$OUT/log.txt" | grep -E "^profile|^  [A-Za-z_]|seq/s|FLOPs|rel err| raised |correctness|compiled|unsupported|Error|error|trained|loss .* nats|\[1x|\[3x|^attention fwd|^(path|xla-drop|cudnn|pallas)[ -]"
}
for it in $items; do case $it in
  correct)      run 240 python3 tools/gpu_correctness.py ;;
  correct_cudnn) run 200 python3 tools/gpu_correctness.py --checks=reference,cudnn ;;
  correct_pallas) run 150 python3 tools/gpu_correctness.py --checks=pallas ;;
  correct_switches) run 200 python3 tools/gpu_correctness.py --checks=switches ;;
  correct_norm) run 150 python3 tools/gpu_correctness.py --checks=norm ;;
  base)         run 120 $B $BASE --label=base $FAST ;;
  profile_base) run 200 $B $BASE --label=base $FAST --profile_dir=/tmp/profile_base --hlo_out=/tmp/base_step.hlo.txt
                gzip -c /tmp/base_step.hlo.txt > "$OUT/base_step.hlo.txt.gz" 2>/dev/null
                tr=$(ls -t /tmp/profile_base/plugins/profile/*/*.trace.json.gz 2>/dev/null | head -1)
                [ -n "$tr" ] && [ "$(stat -c %s "$tr")" -lt 15000000 ] && cp "$tr" "$OUT/base_trace.json.gz" ;;
  profile_large) run 240 $B $LARGE --label=large $FAST --profile_dir=/tmp/profile_large ;;
  large)        run 180 $B $LARGE --label=large $FAST ;;
  torch_base)   run 200 $B $BASE --label=base --skip_jax --compare_torch --config.model.attention_dropout_rate=0 ;;
  torch_large)  run 240 $B $LARGE --label=large --skip_jax --compare_torch --config.model.attention_dropout_rate=0 ;;
  base_b256)    run 150 $B $BASE --label=base-b256 $FAST --config.batch_size=256 ;;
  large_b96)    run 180 $B $LARGE --label=large-b96 $FAST --config.batch_size=96 ;;  # 44 GB at 64
  large_b128)   run 200 $B $LARGE --label=large-b128 $FAST --config.batch_size=128 ;;  # H200 only
  base_threefry) run 120 $B $BASE --label=base-threefry --config.model.attention_dropout_rate=0 ;;
  base_scan)    run 120 $B $BASE --label=base-scanned $FAST --config.model.scan_unroll=1 ;;
  large_scan)   run 150 $B $LARGE --label=large-scanned $FAST --config.model.scan_unroll=1 ;;
  base_fused)   run 120 $B $BASE --label=base-fused-qkv $FAST --config.model.fused_qkv=true ;;
  base_tanh)    run 120 $B $BASE --label=base-tanh-gelu $FAST --config.model.gelu_approximate=true ;;
  base_nodrop)  run 120 $B $BASE --label=base-no-dropout $FAST --config.model.dropout_rate=0 ;;
  base_lnvjp)   run 120 $B $BASE --label=base-ln-vjp $FAST --config.model.layer_norm_vjp=true ;;
  base_fold)    run 120 $B $BASE --label=base-fold-biases $FAST --config.model.fold_attention_biases=true ;;
  large_fold)   run 180 $B $LARGE --label=large-fold-biases $FAST --config.model.fold_attention_biases=true ;;
  # dropout masks from robertax.hash_rng (estimated -4.6% step time: no mask kernels, 22
  # integer operations an element that the estimate cannot see; threefry's 122 measured slow)
  base_hash)    run 120 $B $BASE --label=base-hash-dropout $FAST --config.dropout_rng=hash ;;
  large_hash)   run 180 $B $LARGE --label=large-hash-dropout $FAST --config.dropout_rng=hash ;;
  base_fold_hash) run 120 $B $BASE --label=base-fold-hash $FAST --config.dropout_rng=hash --config.model.fold_attention_biases=true ;;
  large_fold_hash) run 180 $B $LARGE --label=large-fold-hash $FAST --config.dropout_rng=hash --config.model.fold_attention_biases=true ;;
  # both switches at the larger batches (estimates 2026-12-07: large 460, base 1,415 seq/s)
  large_b96_fold_hash) run 200 $B $LARGE --label=large-b96-fold-hash $FAST --config.batch_size=96 --config.dropout_rng=hash --config.model.fold_attention_biases=true ;;
  base_b256_fold_hash) run 150 $B $BASE --label=base-b256-fold-hash $FAST --config.batch_size=256 --config.dropout_rng=hash --config.model.fold_attention_biases=true ;;
  # the paper's large batches come from gradient accumulation: 8 microbatches of 128 (base) or
  # 64 (large) in one step, both switches (estimates 2026-12-07: 91.3 and 140.0 ms a microbatch,
  # against 92.2 and 142.1 for one batch; the optimizer runs once a step)
  base_acc_fold_hash) run 200 $B $BASE --label=base-acc8-fold-hash $FAST --config.batch_size=1024 --config.microbatches=8 --config.dropout_rng=hash --config.model.fold_attention_biases=true ;;
  large_acc_fold_hash) run 240 $B $LARGE --label=large-acc8-fold-hash $FAST --config.batch_size=512 --config.microbatches=8 --config.dropout_rng=hash --config.model.fold_attention_biases=true ;;
  # each layer's residual add, dropout and LayerNorm in one Triton kernel, with both switches
  # (estimates 2026-12-07, session 27: base 128 92.20 -> 88.07 ms, 256 180.98 -> 172.07, large
  # 64 142.11 -> 136.58)
  base_fused_norm) run 120 $B $BASE --label=base-fold-hash-fused-norm $FAST --config.dropout_rng=hash --config.model.fold_attention_biases=true --config.model.fused_norm=true ;;
  large_fused_norm) run 180 $B $LARGE --label=large-fold-hash-fused-norm $FAST --config.dropout_rng=hash --config.model.fold_attention_biases=true --config.model.fused_norm=true ;;
  base_b256_fused_norm) run 150 $B $BASE --label=base-b256-fold-hash-fused-norm $FAST --config.batch_size=256 --config.dropout_rng=hash --config.model.fold_attention_biases=true --config.model.fused_norm=true ;;
  # the same with the products left to cuBLAS (no Triton GEMM fusions): estimates 2026-12-07,
  # session 28: base 128 88.07 -> 85.36 ms, 256 172.07 -> 166.99 (projected 1,326 seq/s),
  # large 64 136.58 -> 132.38
  base_fused_norm_notriton) XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" run 120 $B $BASE --label=base-fold-hash-fused-norm-notriton $FAST --config.dropout_rng=hash --config.model.fold_attention_biases=true --config.model.fused_norm=true ;;
  large_fused_norm_notriton) XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" run 180 $B $LARGE --label=large-fold-hash-fused-norm-notriton $FAST --config.dropout_rng=hash --config.model.fold_attention_biases=true --config.model.fused_norm=true ;;
  base_b256_fused_norm_notriton) XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" run 150 $B $BASE --label=base-b256-fold-hash-fused-norm-notriton $FAST --config.batch_size=256 --config.dropout_rng=hash --config.model.fold_attention_biases=true --config.model.fused_norm=true ;;
  # the MLM head's gather before 2026-12-06 (take_along_axis; estimated +1.7% step time)
  base_take)    run 120 $B $BASE --label=base-take-gather $FAST --config.model.gather_onehot=false ;;
  large_lnvjp)  run 180 $B $LARGE --label=large-ln-vjp $FAST --config.model.layer_norm_vjp=true ;;
  base_notriton) XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" run 120 $B $BASE --label=base-notriton $FAST ;;
  base_cublaslt) XLA_FLAGS="--xla_gpu_enable_cublaslt=true" run 120 $B $BASE --label=base-cublaslt $FAST ;;
  # tanh GELU is what cuBLASLt can fuse into the up-projection's epilogue (bias + GELU)
  base_tanh_cublaslt) XLA_FLAGS="--xla_gpu_enable_cublaslt=true" run 120 $B $BASE --label=base-tanh-cublaslt $FAST --config.model.gelu_approximate=true ;;
  # Candidates for the memory-bound kernels (LayerNorm, GELU): cuDNN's LayerNorm kernels where
  # XLA matches the pattern; Triton for every GEMM (so bias + GELU can fuse into the product);
  # Triton fusions for more elementwise/reduction groups.
  base_cudnn_ln) XLA_FLAGS="--xla_gpu_enable_cudnn_layer_norm=true" run 120 $B $BASE --label=base-cudnn-ln $FAST ;;
  base_triton_any) XLA_FLAGS="--xla_gpu_triton_gemm_any=true" run 150 $B $BASE --label=base-triton-any $FAST ;;
  base_heroless) XLA_FLAGS="--xla_gpu_experimental_enable_triton_heroless_priority_fusion=true" run 120 $B $BASE --label=base-heroless $FAST ;;
  # The paper's attention dropout 0.1 (XLA attention); batches that fit an 80 GB H100.
  base_xla)     run 120 $B $BASE --label=base-xla-drop --config.batch_size=64 --config.model.attention_dropout_rate=0.1 --config.dropout_rng=rbg ;;
  large_xla)    run 150 $B $LARGE --label=large-xla-drop --config.batch_size=32 --config.model.attention_dropout_rate=0.1 --config.dropout_rng=rbg ;;
  # the same with hash dropout: its [B, N, L, L] attention masks never reach memory as bits
  # (estimates 2026-12-07: base 85.0 -> 71.2 ms, large 124.9 -> 106.6)
  base_xla_hash) run 120 $B $BASE --label=base-xla-drop-hash --config.batch_size=64 --config.model.attention_dropout_rate=0.1 --config.dropout_rng=hash ;;
  large_xla_hash) run 150 $B $LARGE --label=large-xla-drop-hash --config.batch_size=32 --config.model.attention_dropout_rate=0.1 --config.dropout_rng=hash ;;
  base_xla_vjp) run 120 $B $BASE --label=base-xla-vjp-drop --config.batch_size=64 --config.model.attention_dropout_rate=0.1 --config.dropout_rng=rbg --config.model.attention_vjp=true ;;
  large_xla_vjp) run 150 $B $LARGE --label=large-xla-vjp-drop --config.batch_size=32 --config.model.attention_dropout_rate=0.1 --config.dropout_rng=rbg --config.model.attention_vjp=true ;;
  # The paper's attention dropout 0.1 through robertax.flash_attention (Triton): the weights
  # and their masks never reach memory (estimates 2026-12-07, hash dropout: base 128 138.1 ->
  # 100.3 ms, 47.8 -> 23.6 GB; compare base_xla_hash, which fits only at batch 64)
  # the attention core alone (base's shapes, batch 16): XLA with dropout, cuDNN, the fused
  # kernel with and without dropout, and three other block/launch settings of it
  attn)         run 120 python3 tools/bench_attention.py --json_out="$OUT/attention.jsonl" --pallas_configs=64x64/64/4/2,128x64/64/4/3,128x128/64/8/2 ;;
  base_pallas)  run 150 $B $BASE --label=base-pallas-drop --config.model.attention=pallas --config.model.attention_dropout_rate=0.1 --config.dropout_rng=hash ;;
  large_pallas) run 200 $B $LARGE --label=large-pallas-drop --config.model.attention=pallas --config.model.attention_dropout_rate=0.1 --config.dropout_rng=hash ;;
  train)        run 150 python3 -m robertax.train --workdir="$(mktemp -d /tmp/wd_gpu.XXXX)" --config.optim.total_steps=60 --config.precision=bfloat16 ;;
  *) echo "unknown item $it" >&2 ;;
esac; done
echo; echo "== summary (seq/s) =="; [ -f "$J" ] && python3 - "$J" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
w = max(len(r["label"]) for r in rows) + 2
print(f"{'config':<{w}}{'framework':<24}{'attn':<7}{'batch':>6}{'seq/s':>10}{'tok/s':>12}{'TFLOP/s':>9}{'MFU':>7}{'mem GB':>8}")
for r in rows:
    mfu = f"{100*r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else "n/a"
    print(f"{r['label']:<{w}}{r['framework']:<24}{r['attention']:<7}{r['batch']:>6}{r['seq_per_s']:>10.1f}{r['tokens_per_s']:>12,.0f}{r['tflops']:>9.1f}{mfu:>7}{mem:>8}")
print("device:", rows[0]["device"])
PY
