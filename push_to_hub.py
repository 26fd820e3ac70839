"""Publish a trained pg-gpt2 folder to the Hugging Face Hub.

    python push_to_hub.py OUTPUT_DIR your-username/pg-gpt2-shakespeare [--private] [--revision BRANCH]
        [--commit_message MSG] [--create_pr] [--dry_run] [--as_gpt2] [--include PATTERN ...]

The token comes from HF_TOKEN or `hf auth login`, the endpoint from HF_ENDPOINT. The folder is validated
in a clean process (it must load with trust_remote_code and generate) before anything is sent; see
`modeling_pg_gpt2.hub` for what is uploaded.
"""

from transformers import HfArgumentParser

from modeling_pg_gpt2.cli import run_cli
from modeling_pg_gpt2.hub import PushArguments, push_to_hub


def main() -> None:
    parser = HfArgumentParser(PushArguments, description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Folder written by run_clm.py (or save_pretrained).")
    parser.add_argument("repo_id", help="Repository on the Hub, as namespace/name.")
    args, paths = parser.parse_args_into_dataclasses()
    push_to_hub(paths.output_dir, paths.repo_id, args)


if __name__ == "__main__":
    run_cli(main)
