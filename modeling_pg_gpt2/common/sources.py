"""Where a `from_pretrained` source is: a local folder or a Hub repository, checked at once with one clear line.

transformers, given a name that is neither, retries the Hub for about a minute and then names neither
cause; every command that loads a model or tokenizer asks `check_pretrained_source` first.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError, first_line

# Files one of which a model or tokenizer repository already in the Hub cache holds.
_CACHED_MARKERS = ("config.json", "tokenizer_config.json", "tokenizer.json")


def looks_like_local_path(name: str) -> bool:
    """Whether `name` reads as a path, not a Hub id: `./x`, `/x`, `~/x`, `a/b/c`, or `out/x` where `out/` exists."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    head, sep, _ = name.partition("/")
    return bool(sep) and Path(head).is_dir()


def check_pretrained_source(
    name: str | os.PathLike,
    what: str = "model",
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> None:
    """Refuse at once, with a `UserError`, a `from_pretrained` source that is neither a folder nor a Hub repository.

    A missing local path (see `looks_like_local_path`) is "no such folder" without asking the Hub. A Hub
    id that is not in the Hub cache (and with the Hub not switched off by `HF_HUB_OFFLINE`) is looked up
    once: an unreachable Hub or a missing repository is said at once, where transformers would retry for
    about a minute and then name neither cause.
    """
    name = os.fspath(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise UserError(f"{name} is a file; pass the {what} folder (or a Hub repository id)")
    missing = f"no such folder: {name}"
    if looks_like_local_path(name):
        raise UserError(f"{missing}; pass an existing {what} folder (or a Hub id, as namespace/name)")

    import httpx2
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(f"{missing}; pass an existing {what} folder (or a Hub id, as namespace/name)") from None
    cached = (try_to_load_from_cache(name, m, cache_dir=cache_dir, revision=revision) for m in _CACHED_MARKERS)
    if constants.HF_HUB_OFFLINE or any(isinstance(found, str) for found in cached):
        return  # from_pretrained reads the cache (or says that offline it cannot)
    hub = constants.ENDPOINT
    try:
        HfApi(token=token).model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        raise UserError(f"{name} is a gated repository: accept its conditions, then `hf auth login`") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{missing}, and {hub} has no repository {name} (or your token cannot see it); "
            f"pass an existing {what} folder"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"the Hub repository {name} has no revision {revision!r}") from None
    except HfHubHTTPError as err:
        raise UserError(f"{missing}, and the Hub at {hub} answered: {first_line(err)}") from None
    except (httpx2.TransportError, OSError) as err:  # no network, DNS, connection refused, timeout
        raise UserError(
            f"{missing}, and the Hub at {hub} is unreachable ({first_line(err)}); pass an existing folder, "
            "or set HF_HUB_OFFLINE=1 to use the models in the Hub cache"
        ) from None


__all__ = ["check_pretrained_source", "looks_like_local_path"]
