#!/usr/bin/env bash
# `make demo`: the whole job on the bundled Shakespeare corpus, offline, on a laptop CPU (~11 minutes):
# one run_clm.py command with the automatic recipe (it trains a byte-level BPE tokenizer on the training
# plays, times the machine, chooses the model and the schedule for 8 minutes, pre-trains with the Trainer:
# evaluations, best model, curves, model card), then a streamed sample and the validation bits per byte.
#
#   bash scripts/demo.sh                  # what `make demo` runs (after `make install`)
#   bash scripts/demo.sh path/to/python   # with another interpreter (default: .venv/bin/python)
#
# Output: outputs/shakespeare/ (see the README; the tokenizer in outputs/shakespeare/tokenizer/). Each run starts over.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${1:-.venv/bin/python}
MODEL=outputs/shakespeare
# Everything is local: never wait on the Hugging Face Hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
start=$SECONDS

echo "== 1/2 Tokenizer, recipe and pre-training: 8 minutes on Shakespeare's plays (the automatic recipe)"
"$PYTHON" run_clm.py --dataset_name shakespeare --max_train_minutes 8 --output_dir "$MODEL" --overwrite_output_dir

echo "== 2/2 A sample from the trained model"
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
