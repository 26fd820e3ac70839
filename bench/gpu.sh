#!/usr/bin/env bash
# The GPU checks and benchmarks, in order of importance, for a machine with one CUDA GPU:
#   bash bench/gpu.sh [LOG_DIR]        (default: $OUT, else /tmp/pg-gpt2-gpu)
# 1. tests/model/test_cuda.py: bf16 training on sdpa's flash kernel, torch.compile, flex attention and
#    generation on CUDA, each against transformers' GPT2LMHeadModel;
# 2. the training step of GPT-2 124M at context 1024 in bf16, compiled: tokens/s and MFU against the
#    matmul peak measured on the spot (bench_train.py);
# 3. run_clm.py itself (GPT-2 124M, context 1024, batch 16, bf16, compiled, offline on the bundled corpus):
#    the tokens/s and MFU (against the datasheet peak, modeling_pg_gpt2/training/throughput.py) its log and
#    metrics.json report, then the same run under FSDP2 on one GPU, with flash-attn's kernel (when the
#    package is installed) and streamed (--streaming);
# 4. the uncompiled training step, and greedy generation in bf16 (dynamic cache, compiled static cache).
# Each step has a time limit and logs to LOG_DIR, so a cut-short run still leaves what it measured;
# `grep -h '^==\|^clm' LOG_DIR/*.log` collects the figures.
set -u
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-/tmp/pg-gpt2-gpu}}
mkdir -p "$logs"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package, installed or not
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to LOG_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

runs=${TMPDIR:-/tmp}/pg-gpt2-gpu-runs  # run_clm.py's output folders: models stay out of LOG_DIR
clm() {  # clm NAME SECONDS [LAUNCHER...] -- [FLAGS...]: a short run_clm.py run, then its tokens/s and MFU
    local name=$1 limit=$2 launcher=()
    shift 2
    while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
    shift
    [ ${#launcher[@]} -gt 0 ] || launcher=("$python")
    step "$name" "$limit" "${launcher[@]}" run_clm.py --dataset_name shakespeare \
        --tokenizer_name "$runs/tokenizer" --config_name gpt2 --block_size 1024 --per_device_train_batch_size 16 \
        --max_steps 50 --logging_steps 10 --warmup_steps 5 --do_eval false --save_strategy no --report_to none \
        --bf16 true --torch_compile true --attn_implementation sdpa --optim adamw_torch_fused \
        --disable_tqdm true --overwrite_output_dir --output_dir "$runs/$name" "$@"
    cp "$runs/$name/metrics.json" "$logs/$name-metrics.json" 2>/dev/null &&
        "$python" -c 'import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], "%.0f tokens/s, MFU %s" % (m["train_tokens_per_second"], format(m["train_mfu"], ".1%") if "train_mfu" in m else "unknown"))' \
            "$logs/$name-metrics.json" "clm $name:" | tee -a "$logs/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$logs/gpu.txt"
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step tests 150 "$python" -m pytest -q -p no:cacheprovider tests/model/test_cuda.py
train=(bench/bench_train.py --device cuda --dtype bf16 --shapes 124m --context 1024 --batch 16 --attn sdpa)
step train-compile 200 "$python" "${train[@]}" --compile --no-memory --rounds 6

step tokenizer 60 "$python" train_tokenizer.py --dataset_name shakespeare --vocab_size 50257 --min_frequency 1 \
    --output_dir "$runs/tokenizer" --overwrite_output_dir
clm clm-compile 150 --
clm clm-fsdp2 150 "$python" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 --
if "$python" -c "import flash_attn" 2>/dev/null; then
    clm clm-flash-attn 150 -- --attn_implementation flash_attention_2
else
    echo "== clm-flash-attn: flash-attn is not installed (pip install flash-attn): not measured"
fi
clm clm-streaming 150 -- --streaming true

step train 100 "$python" "${train[@]}"
step generate 100 "$python" bench/bench_generate.py --device cuda --dtype bf16 --rounds 4
step generate-compile 200 "$python" bench/bench_generate.py --device cuda --dtype bf16 --compile --shapes 124m --rounds 4
