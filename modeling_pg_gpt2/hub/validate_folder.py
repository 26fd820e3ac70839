"""Load a model folder as a stranger would and generate a few tokens: the check `push_to_hub.py` runs first.

Not imported by the package: `hub.validate_folder` runs this file by its path in a clean interpreter,

    python -I modeling_pg_gpt2/validate_folder.py FOLDER remote|native

from an empty directory with `HF_HUB_OFFLINE=1`. It prints one line, `PG_GPT2_VALIDATION {json}`: the
report (model class, vocabulary size, tokenizer size, sample) or `{"error": ...}`. It imports only torch
and transformers, and makes `import modeling_pg_gpt2` fail even where the package is installed, so the
model can only come from the folder's own files (its remote code with `remote`).
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

REPORT_PREFIX = "PG_GPT2_VALIDATION "


def done(**report: Any) -> NoReturn:
    print(REPORT_PREFIX + json.dumps(report))
    sys.exit(0)


# This script runs in a clean interpreter (`python -I`) where the package cannot be imported, so it keeps its own
# copy of `common.errors.first_line` (class name first) and of the start/pad fallbacks of `data.tokenizer`.
def first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def main(folder: str, expect_remote: bool) -> NoReturn:
    sys.modules["modeling_pg_gpt2"] = None  # type: ignore[assignment]  (an installed copy must not stand in)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    except Exception as err:
        done(error=f"the tokenizer does not load ({first_line(err)})")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    except Exception as err:
        done(error=f"the model does not load with trust_remote_code=True ({first_line(err)})")

    module = type(model).__module__
    if expect_remote and not module.startswith("transformers_modules"):
        done(error=f"the model class comes from {module}, not from the folder's remote code")
    vocab_size, rows = model.config.vocab_size, model.get_input_embeddings().weight.shape[0]
    if rows != vocab_size:
        done(error=f"the embedding has {rows} rows but config.vocab_size is {vocab_size}")
    if len(tokenizer) > vocab_size:
        done(error=f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} (config.vocab_size)")

    ids = tokenizer("The", return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start if start is not None else 0]])
    pad = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)  # id 0 is a pad
    try:
        with torch.no_grad():
            logits = model(ids).logits
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=pad
            )
    except Exception as err:
        done(error=f"generation fails ({first_line(err)})")
    if not torch.isfinite(logits).all():
        done(error="the model outputs NaN or infinite logits")
    done(
        model_class=f"{module}.{type(model).__name__}",
        vocab_size=vocab_size,
        tokenizer_size=len(tokenizer),
        sample=tokenizer.decode(out[0]),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "remote")
