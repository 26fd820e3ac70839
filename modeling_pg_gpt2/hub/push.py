"""Publish a trained output folder to the Hugging Face Hub.

`push_to_hub(output_dir, repo_id, args)` is what `push_to_hub.py` runs:

1. pick the files a user of the model needs (weights, config with `auto_map`, the two remote-code files,
   tokenizer, generation config, plots, `metrics.json`, model card) and leave the rest of a training folder
   (checkpoints with optimizer states, TensorBoard logs, trainer state) behind unless `--include` asks;
2. check that the tokenizer is a working one, and the model card's metadata; the card published (written
   from the folder's files when it has none) has usage snippets that name the repository. The folder itself
   is never changed: what is uploaded is staged in a temporary folder;
3. load the folder in a clean Python process where this package cannot be imported, through its remote code
   with `trust_remote_code=True`, and generate a few tokens: a folder that would not work for others is
   refused before anything is sent;
4. with huggingface_hub: check the token, `create_repo`, create the branch, `upload_folder`. Unchanged files
   are not re-sent, and a push of an unchanged folder makes no commit.

Every failure a user can fix is a one-line `UserError`.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import UserError, first_line
from ..common.outputs import (
    MODEL_CARD_FILE,
    MODEL_FILES,
    REPORT_PATTERNS,
    TOKENIZER_FILES,
    WEIGHT_PATTERNS,
    read_config,
)
from ..common.sources import hub_errors
from ..reports.model_card import check_model_card, gpt2_model_card, prepare_model_card

VALIDATION_TIMEOUT_S = 1800


@dataclass
class PushArguments:
    """Options of `push_to_hub.py`; the folder and the repository id are positional arguments."""

    private: bool = field(default=False, metadata={"help": "Create the repository as private (new repos only)."})
    revision: str | None = field(
        default=None, metadata={"help": "Push to this branch instead of main; it is created from main if needed."}
    )
    commit_message: str | None = field(default=None, metadata={"help": "Message of the commit on the Hub."})
    create_pr: bool = field(
        default=False, metadata={"help": "Open a pull request (against main or --revision) instead of committing."}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Validate the folder and list what would be uploaded, with sizes; send nothing."},
    )
    as_gpt2: bool = field(
        default=False,
        metadata={
            "help": "Push the weights converted to transformers' native `gpt2` (GPT2LMHeadModel), which loads "
            "without trust_remote_code."
        },
    )
    include: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra files to upload, as glob patterns relative to the folder, e.g. 'runs/*' or "
            "'checkpoint-*/*'. By default checkpoints, logs and trainer state stay local."
        },
    )
    token: str | None = field(
        default=None,
        metadata={
            "help": "Hugging Face token. Prefer the HF_TOKEN environment variable or `hf auth login`: a token "
            "typed on the command line ends up in your shell history."
        },
    )


@dataclass(frozen=True)
class UploadPlan:
    """The files of `folder` that will be uploaded (paths relative to it, POSIX style) and their sizes."""

    folder: Path
    files: dict[str, int]
    left_out: dict[str, int]

    @property
    def total_size(self) -> int:
        return sum(self.files.values())


def human_size(n_bytes: int) -> str:
    """`1536` -> `'1.5 KB'`."""
    size, unit = float(n_bytes), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n_bytes} B" if unit == "B" else f"{size:.1f} {unit}"


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remote_code_files(config: dict[str, Any], folder: Path | None = None) -> list[str]:
    """The `.py` files `config.json`'s `auto_map` points at (`"module.Class"` -> `module.py`), and, given the
    folder, the files they import relatively (`from .x import y`), which transformers fetches with them."""
    from transformers.dynamic_module_utils import get_relative_imports

    files = set()
    for ref in (config.get("auto_map") or {}).values():
        refs = ref if isinstance(ref, list | tuple) else [ref]
        for item in refs:
            if item and "--" not in item:  # "other/repo--module.Class" is hosted in another repository
                files.add(item.rsplit(".", 1)[0] + ".py")
    unread = sorted(files) if folder is not None else []
    while unread:  # a missing file is left in the list for the caller to report
        path = folder / unread.pop()
        for module in get_relative_imports(path) if path.is_file() else []:
            if f"{module}.py" not in files:
                files.add(f"{module}.py")
                unread.append(f"{module}.py")
    return sorted(files)


def serving_note(config: dict[str, Any], folder: Path) -> str | None:
    """What to tell about a folder saved before serving support: its config.json maps no `AutoModel`, which vLLM's
    and SGLang's Transformers backends build, and its code's ignore patterns would drop the attention biases
    there. It is published as it is (transformers loads it); None for a folder saved since."""
    if "AutoModel" in (config.get("auto_map") or {}):
        return None
    return (
        f"note: {folder} was saved before serving support (config.json's auto_map has no AutoModel): vLLM and "
        "SGLang will not load the published model. Save it again with this package first (docs/serving.md)."
    )


def plan_upload(folder: Path, include: list[str] | tuple[str, ...] = (), remote_code: bool = True) -> UploadPlan:
    """Choose the files to upload from a saved model folder, or explain with a `UserError` what is missing.

    Top-level files only: safetensors weights (and shard index), `config.json`, `generation_config.json`, the
    remote-code files named by `auto_map` (when `remote_code`), tokenizer files, `metrics.json`, `*.png` plots
    and `README.md`. `include` adds glob patterns matched against paths relative to `folder`.
    """
    from ..data.tokenizer import check_tokenizer_files

    config = read_config(folder)
    top_level = {p.name for p in folder.iterdir() if p.is_file()}
    chosen = {name for name in top_level if any(fnmatch.fnmatch(name, p) for p in WEIGHT_PATTERNS)}
    if not any(name.endswith(".safetensors") for name in chosen):
        found = ", ".join(sorted(n for n in top_level if n.endswith((".bin", ".pt", ".pth")))) or "none"
        raise UserError(
            f"{folder} has no safetensors weights (other weight files: {found}); "
            "save the model with `model.save_pretrained(folder)`"
        )
    if remote_code:
        code = remote_code_files(config, folder)
        if not code:
            raise UserError(
                f"{folder}/config.json has no auto_map, so the model would not load from the Hub: "
                "save it with `model.save_pretrained(folder)` after `import modeling_pg_gpt2`"
            )
        missing = [name for name in code if name not in top_level]
        if missing:
            raise UserError(
                f"{folder} lacks the remote-code file(s) {', '.join(missing)} that config.json's auto_map names: "
                "save it again with `model.save_pretrained(folder)`"
            )
        chosen.update(code)
    check_tokenizer_files(folder)
    chosen.update(top_level & set(MODEL_FILES + TOKENIZER_FILES))
    chosen.update(n for n in top_level if any(fnmatch.fnmatch(n, p) for p in REPORT_PATTERNS))

    files = {name: (folder / name).stat().st_size for name in chosen}
    for pattern in include:
        matches = [
            p for p in folder.rglob("*") if p.is_file() and fnmatch.fnmatch(p.relative_to(folder).as_posix(), pattern)
        ]
        if not matches:
            raise UserError(f"--include {pattern!r} matches no file in {folder}")
        files.update({p.relative_to(folder).as_posix(): p.stat().st_size for p in matches})

    left_out = {}
    for entry in sorted(folder.iterdir()):
        rel = entry.name + ("/" if entry.is_dir() else "")
        if entry.is_file() and entry.name in files:
            continue
        if entry.is_dir() and any(path.startswith(rel) for path in files):
            continue
        left_out[rel] = _tree_size(entry)
    return UploadPlan(folder, dict(sorted(files.items())), left_out)


# -- validation in a clean process ---------------------------------------------------------------------------

# The check itself, a script run by path (`python -I`): see its docstring.
VALIDATE_SCRIPT = Path(__file__).with_name("validate_folder.py")


def validate_folder(
    folder: Path, remote_code: bool = True, python: str = sys.executable, shown: str | Path | None = None
) -> dict[str, Any]:
    """Load `folder` as a stranger would and generate a few tokens; refuse it with a `UserError` if that fails.

    A fresh `python -I` process in an empty directory, with this package made unimportable, loads the model
    through `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` (checking that its class
    comes from the folder's remote code when `remote_code`) and the tokenizer with `AutoTokenizer`, checks
    that the tokenizer fits the model's vocabulary and that the logits are finite, and generates 4 tokens
    greedily. Nothing touches the network (`HF_HUB_OFFLINE=1`) or the user's module cache. Returns the
    report (model class, vocab size, tokenizer size, generated sample). Messages name `shown` (default:
    `folder`), the folder the user knows when `folder` is a staged copy.
    """
    shown = shown or folder
    with tempfile.TemporaryDirectory(prefix="pg_gpt2_validate_") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": os.path.join(tmp, "modules")}
        env.update(TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
        command = [python, "-I", str(VALIDATE_SCRIPT), str(folder.resolve()), "remote" if remote_code else "native"]
        try:
            proc = subprocess.run(
                command, cwd=tmp, env=env, capture_output=True, text=True, timeout=VALIDATION_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise UserError(f"validating {shown} took more than {VALIDATION_TIMEOUT_S} s; gave up") from None
    reports = [line for line in proc.stdout.splitlines() if line.startswith("PG_GPT2_VALIDATION ")]
    if not reports:
        stderr = [line for line in proc.stderr.splitlines() if line.strip()]
        raise UserError(
            f"{shown} failed validation: the check process exited with status {proc.returncode} "
            f"({stderr[-1] if stderr else 'no output'})"
        )
    report = json.loads(reports[-1].split(" ", 1)[1])
    if "error" in report:
        raise UserError(f"{shown} is not ready to publish: {report['error']}")
    return report


# -- Hub -----------------------------------------------------------------------------------------------------


def check_repo_id(repo_id: str) -> None:
    """`namespace/name` with the Hub's allowed characters, or a `UserError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise UserError(f"repo id {repo_id!r} must be 'namespace/name', e.g. 'your-username/pg-gpt2-shakespeare'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"repo id {repo_id!r} is not valid: {first_line(err)}") from None


def _stage_gpt2(folder: Path, plan: UploadPlan, staging: Path, repo_id: str, card: Path) -> Path:
    """Write the native `gpt2` variant of `folder` into `staging`: converted weights, tokenizer, plots, and
    the gpt2 version of the prepared `card`."""
    from ..export.convert import convert_pg_to_gpt2

    convert_pg_to_gpt2(folder, staging)
    for name in plan.files:
        converted = name in MODEL_FILES or any(fnmatch.fnmatch(name, p) for p in WEIGHT_PATTERNS)
        if converted or name.endswith(".py") or name == MODEL_CARD_FILE or (staging / name).exists():
            continue
        shutil.copy2(folder / name, staging / name)
    gpt2_model_card(card, staging / MODEL_CARD_FILE, repo_id)
    return staging


def _stage_files(plan: UploadPlan, staging: Path, card: Path) -> UploadPlan:
    """The upload of `plan` from `staging`: links to the folder's files, and the prepared `card` as README.md.

    Symbolic links (copies where the file system has none) cost nothing for big weights; the Hub client
    reads through them.
    """
    for name in plan.files:
        if name == MODEL_CARD_FILE:
            continue
        link = staging / name
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to((plan.folder / name).resolve())
        except OSError:
            shutil.copy2(plan.folder / name, link)
    card.replace(staging / MODEL_CARD_FILE)
    files = {**plan.files, "README.md": (staging / MODEL_CARD_FILE).stat().st_size}
    return UploadPlan(staging, dict(sorted(files.items())), plan.left_out)


def push_to_hub(output_dir: str | Path, repo_id: str, args: PushArguments | None = None) -> str | None:
    """Validate `output_dir` and publish it as the model repository `repo_id`; see the module docstring.

    Returns the commit id on the Hub (the unchanged head when nothing changed), or `None` for a dry run.
    """
    from huggingface_hub import constants, get_token

    from ..data.tokenizer import load_tokenizer

    args = args or PushArguments()
    folder = Path(output_dir)
    check_repo_id(repo_id)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass the --output_dir of run_clm.py")
    token = args.token or get_token()
    if token is None and not args.dry_run:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (it needs the 'write' role)")
    if args.as_gpt2 and args.include:
        raise UserError("--include applies to the folder as it is: it cannot be combined with --as_gpt2")

    plan = plan_upload(folder, args.include)
    load_tokenizer(folder)  # a folder without a working tokenizer would load (and generate) for nobody
    note = None if args.as_gpt2 else serving_note(read_config(folder), folder)
    if note:
        print(note)

    # What is uploaded is staged beside the folder, which the push never changes: the card published
    # names the repository (the gpt2 export gets its own version of it).
    with tempfile.TemporaryDirectory(prefix="pg_gpt2_push_") as tmp:
        staging = Path(tmp)
        card = staging / "card" / "README.md"
        card_change = prepare_model_card(folder, card, None if args.as_gpt2 else repo_id)
        if card_change:
            print(card_change)
        check_model_card(card, shown=folder / MODEL_CARD_FILE)
        if args.as_gpt2:
            plan = plan_upload(_stage_gpt2(folder, plan, staging / "gpt2", repo_id, card), remote_code=False)
            check_model_card(plan.folder / MODEL_CARD_FILE, remote_code=False)
        else:
            plan = _stage_files(plan, staging / "upload", card)
        shown = f"the gpt2 export of {folder}" if args.as_gpt2 else folder
        report = validate_folder(plan.folder, remote_code=not args.as_gpt2, shown=shown)
        print(
            f"validated {shown}: "
            f"{report['model_class'].rsplit('.', 1)[-1]}, "
            f"vocab {report['vocab_size']} (tokenizer {report['tokenizer_size']}), greedy {report['sample']!r}"
        )
        target = f"{constants.ENDPOINT}/{repo_id}" + (f" (branch {args.revision})" if args.revision else "")
        if args.dry_run:
            print_plan(plan, f"dry run: would upload to {target}")
            return None
        return _upload(plan, repo_id, args, token, target)


def print_plan(plan: UploadPlan, title: str) -> None:
    """Print what is uploaded (and what stays local) with sizes."""
    print(f"{title}: {len(plan.files)} files, {human_size(plan.total_size)}")
    for path, size in plan.files.items():
        print(f"  {human_size(size):>10}  {path}")
    if plan.left_out:
        kept = ", ".join(f"{name} ({human_size(size)})" for name, size in plan.left_out.items())
        print(f"not uploaded (add with --include PATTERN): {kept}")


def _upload(plan: UploadPlan, repo_id: str, args: PushArguments, token: str, target: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors(repo_id, writing=True):
        user = api.whoami()["name"]
        api.create_repo(repo_id, private=args.private, exist_ok=True)
        if args.revision and not args.create_pr:  # a pull request targets an existing branch
            api.create_branch(repo_id, branch=args.revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=args.revision).sha
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=plan.folder,
            allow_patterns=[glob.escape(path) for path in plan.files],
            commit_message=args.commit_message or f"Upload {repo_id.split('/')[1]} with push_to_hub.py",
            revision=args.revision,
            create_pr=args.create_pr,
        )
    if info.oid == head and not info.pr_url:
        print(f"{target} is up to date: nothing changed, no new commit (head {head[:10]})")
    else:
        print_plan(plan, f"pushed as {user} to {target}")
        print(f"opened pull request {info.pr_url}" if info.pr_url else f"commit {info.oid}: {info.commit_url}")
    return info.oid
