#!/usr/bin/env bash
# One prepared GPU session (< 10 minutes): install the carried wheels, check the fast paths'
# numerics, then time RoBERTa-base and -large (robertax and transformers) and print one table.
#   bash tools/gpu_check.sh [items...]      items: correct base base_xla large large_xla torch_base torch_large train
# items also: base_rbg base_nodrop base256_rbg large_rbg base_xla_rbg (dropout-RNG and batch variants)
#   profile_base profile_large: where a step's time goes (tools/profile_summary.py table)
#   base_notriton base_unroll: an XLA flag (cuBLAS for every GEMM) and the unrolled layer loop
# Wheels (grain, array_record, ml_collections, tensorboardX, portpicker) are expected in .whl/
# (see the README's performance section for how to fetch them).
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
items=${*:-correct base large torch_base torch_large base_xla large_xla}
J="$OUT/bench.jsonl"
B="python3 tools/bench_train.py --json_out=$J --steps=10 --warmup=2"
BASE="--config=configs/base.py --config.batch_size=128 --config.microbatches=1 --config.precision=bfloat16"
LARGE="--config=configs/large.py --config.batch_size=64 --config.microbatches=1 --config.precision=bfloat16"
run() { local t=$1; shift; echo "== $*" >&2; timeout "$t" "$@" 2>&1 | grep -vE "^(W|I)[0-9]{4} |Warning|warn" | tee -a "$OUT/log.txt" | grep -E "^profile|^  [A-Za-z_]|seq/s|FLOPs|rel err|correctness|compiled|unsupported|Error|error|trained|loss .* nats" ; }
for it in $items; do case $it in
  correct)     run 150 python3 tools/gpu_correctness.py ;;
  base)        run 150 $B $BASE --label=base-cudnn --config.model.attention_dropout_rate=0 ;;
  base_xla)    run 150 $B $BASE --label=base-xla-drop --config.model.attention_dropout_rate=0.1 ;;
  large)       run 180 $B $LARGE --label=large-cudnn --config.model.attention_dropout_rate=0 ;;
  large_xla)   run 180 $B $LARGE --label=large-xla-drop --config.model.attention_dropout_rate=0.1 ;;
  torch_base)  run 200 $B $BASE --label=base --skip_jax --compare_torch --config.model.attention_dropout_rate=0 ;;
  torch_large) run 240 $B $LARGE --label=large --skip_jax --compare_torch --config.model.attention_dropout_rate=0 ;;
  base_rbg)    run 120 $B $BASE --label=base-cudnn-rbg --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg ;;
  base_nodrop) run 120 $B $BASE --label=base-no-dropout --config.model.attention_dropout_rate=0 --config.model.dropout_rate=0 ;;
  base256_rbg) run 150 $B $BASE --label=base-b256-rbg --config.batch_size=256 --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg ;;
  large_rbg)   run 150 $B $LARGE --label=large-cudnn-rbg --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg ;;
  base_xla_rbg) run 120 $B $BASE --label=base-xla-drop-rbg --config.model.attention_dropout_rate=0.1 --config.dropout_rng=rbg ;;
  profile_base)  run 200 $B $BASE --label=base-cudnn-prof --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg --profile_dir=/tmp/profile_base ;;
  profile_large) run 240 $B $LARGE --label=large-cudnn-prof --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg --profile_dir=/tmp/profile_large ;;
  base_notriton) XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" run 150 $B $BASE --label=base-notriton --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg ;;
  base_unroll)   run 200 $B $BASE --label=base-unroll12 --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg --config.model.scan_unroll=12 ;;
  train)       run 150 python3 -m robertax.train --workdir=/tmp/wd_gpu --config.optim.total_steps=60 --config.precision=bfloat16 ;;
esac; done
echo; echo "== summary (seq/s) =="; [ -f "$J" ] && python3 - "$J" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'config':<16}{'framework':<24}{'attn':<7}{'batch':>6}{'seq/s':>10}{'tok/s':>12}{'TFLOP/s':>9}{'MFU':>7}{'mem GB':>8}")
for r in rows:
    mfu = f"{100*r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else "n/a"
    print(f"{r['label']:<16}{r['framework']:<24}{r['attention']:<7}{r['batch']:>6}{r['seq_per_s']:>10.1f}{r['tokens_per_s']:>12,.0f}{r['tflops']:>9.1f}{mfu:>7}{mem:>8}")
print("device:", rows[0]["device"])
PY
