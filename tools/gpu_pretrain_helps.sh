#!/usr/bin/env bash
# Issue 6's "pretraining helps" comparison with the pretraining long enough to leave the MLM
# plateau: tools/pretrain_helps.py on one GPU (a 2-core CPU reaches ~4,000 steps in 25 minutes,
# where a tiny model's MLM loss is still flat; see the README's fine-tuning section).
#   bash tools/gpu_pretrain_helps.sh [STEPS]        (default 30000; < 10 minutes on an H100)
# Then tools/mlm_probe.py says whether the model uses context at <mask> (see its docstring).
# Needs the carried wheels in .whl/ (as tools/gpu_check.sh) and the data in $DATA (default
# .gpu_data, an ignored copy of ../shared/data's glue/SST-2 and text/enwiki-excerpt to carry:
#   mkdir -p .gpu_data/glue .gpu_data/text && cp -r ../shared/data/glue/SST-2 .gpu_data/glue/ \
#     && cp -r ../shared/data/text/enwiki-excerpt .gpu_data/text/
set -eu
STEPS=${1:-30000}
OUT=${OUT:-/tmp/gpu_pretrain_helps}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 ROBERTAX_TEST_DATA=${DATA:-$PWD/.gpu_data}
nvidia-smi --query-gpu=name --format=csv,noheader || true
python3 tools/pretrain_helps.py --workdir="$OUT/run" --corpus="sst2_train_text+enwiki:$STEPS" \
  --train_examples=1000,4000 --seeds=0,1,2 --train_flag=--config.data.num_workers=8 \
  --train_flag=--config.log_every=500 --train_flag=--config.dropout_rng=rbg 2>&1 |
  grep -vE "^(W|I)[0-9]{4} "
# Did the pretraining leave the plateau? (<mask> loss against the unigram baseline)
python3 tools/mlm_probe.py "$OUT/run/pretrain_sst2_train_text+enwiki" 2>&1 | grep -vE "^(W|I)[0-9]{4} "
