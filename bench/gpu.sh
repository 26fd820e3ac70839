#!/usr/bin/env bash
# The GPU checks and benchmarks, in order of importance, for a machine with one CUDA GPU:
#   bash bench/gpu.sh [LOG_DIR]        (default: $OUT, else /tmp/pg-gpt2-gpu)
# 1. tests/test_cuda.py: bf16 training on sdpa's flash kernel, torch.compile, flex attention and
#    generation on CUDA, each against transformers' GPT2LMHeadModel;
# 2. the training step of GPT-2 124M at context 1024 in bf16, eager and compiled (issue 6's GPU point);
# 3. greedy generation in bf16, with the dynamic cache and with the compiled static cache.
# Each step has a time limit and logs to LOG_DIR, so a cut-short run still leaves what it measured.
set -u
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-/tmp/pg-gpt2-gpu}}
mkdir -p "$logs"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package, installed or not
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to LOG_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$logs/gpu.txt"
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step tests 150 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py
train=(bench/bench_train.py --device cuda --dtype bf16 --shapes 124m --context 1024 --batch 16 --attn sdpa)
step train 100 "$python" "${train[@]}"
step train-compile 200 "$python" "${train[@]}" --compile --no-memory --rounds 6
step generate 100 "$python" bench/bench_generate.py --device cuda --dtype bf16 --rounds 4
step generate-compile 200 "$python" bench/bench_generate.py --device cuda --dtype bf16 --compile --shapes 124m --rounds 4
