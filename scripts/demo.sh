#!/usr/bin/env bash
# `make demo`: the whole job on the bundled Shakespeare corpus, offline, on a laptop CPU (~11 minutes):
# train a byte-level BPE tokenizer, pre-train a small GPT-2 with the Trainer (evaluations, best model,
# curves, model card), then stream a generated sample and print the validation bits per byte.
#
#   bash scripts/demo.sh                  # what `make demo` runs (after `make install`)
#   bash scripts/demo.sh path/to/python   # with another interpreter (default: .venv/bin/python)
#
# Outputs: outputs/shakespeare-tokenizer/ and outputs/shakespeare/ (see the README). Each run starts over.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${1:-.venv/bin/python}
TOKENIZER=outputs/shakespeare-tokenizer
MODEL=outputs/shakespeare
# Everything is local: never wait on the Hugging Face Hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
start=$SECONDS

echo "== 1/3 Training the tokenizer on Shakespeare's plays"
"$PYTHON" train_tokenizer.py --dataset_name shakespeare --vocab_size 8192 --output_dir "$TOKENIZER" \
    --overwrite_output_dir

echo "== 2/3 Pre-training pg_gpt2 (configs/shakespeare-cpu.yaml)"
"$PYTHON" run_clm.py configs/shakespeare-cpu.yaml --tokenizer_name "$TOKENIZER" --output_dir "$MODEL" \
    --overwrite_output_dir

echo "== 3/3 A sample from the trained model"
"$PYTHON" generate.py "$MODEL" $'ROMEO:\n' --max_new_tokens 120 --temperature 0.8 --top_k 50 --seed 1

"$PYTHON" - "$MODEL" "$(( SECONDS - start ))" <<'PY'
import json, sys
from pathlib import Path

folder, seconds = Path(sys.argv[1]), int(sys.argv[2])
metrics = json.loads((folder / "metrics.json").read_text())
print(
    f"\nValidation bits per byte: {metrics['eval_bits_per_byte']:.3f} "
    f"(loss {metrics['eval_loss']:.3f} nats/token, perplexity {metrics['eval_perplexity']:.1f}, "
    f"next-token accuracy {metrics['eval_accuracy']:.1%}); {seconds // 60} min {seconds % 60} s in all."
)
print(f"Model, tokenizer, curves and model card: {folder}/ (README.md is the model card).")
PY
