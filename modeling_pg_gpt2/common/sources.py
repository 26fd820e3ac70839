"""The Hub and the places a model comes from: one place that says in one line what went wrong with either.

transformers, given a name that is neither a folder nor a Hub repository, retries the Hub for about a
minute and then names neither cause; every command that loads a model or tokenizer asks
`check_pretrained_source` first. What huggingface_hub raises while looking a repository up, downloading it
or uploading to it (gated, missing, no such revision, switched off, unreachable, a token refused) becomes
one `UserError` line in `hub_errors`, for every command alike; `hub_reachable` is the quick probe for
clients (`datasets`) that would otherwise retry for a while before failing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError, first_line
from .outputs import CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

# Files one of which a model or tokenizer repository already in the Hub cache holds.
_CACHED_MARKERS = (CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE)
# How long `hub_reachable` waits for any answer (DNS included).
HUB_PROBE_TIMEOUT_S = 3.0


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
    once: an unreachable Hub or a missing repository is said at once (`hub_errors`), where transformers
    would retry for about a minute and then name neither cause.
    """
    name = os.fspath(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise UserError(f"{name} is a file; pass the {what} folder (or a Hub repository id)")
    refused = UserError(f"no such folder: {name}; pass an existing {what} folder (or a Hub id, as namespace/name)")
    if looks_like_local_path(name):
        raise refused

    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise refused from None
    cached = (try_to_load_from_cache(name, m, cache_dir=cache_dir, revision=revision) for m in _CACHED_MARKERS)
    if constants.HF_HUB_OFFLINE or any(isinstance(found, str) for found in cached):
        return  # from_pretrained reads the cache (or says that offline it cannot)
    with hub_errors(name, revision=revision, not_a_folder=True, instead=f"pass an existing {what} folder"):
        HfApi(token=token).model_info(name, revision=revision, timeout=10)


@contextlib.contextmanager
def hub_errors(repo_id: str, **options: Any) -> Iterator[None]:
    """Turn what reaching the Hub for `repo_id` raises into one `UserError` line: [`hub_error`], with its `options`.

    Anything that is not about the Hub is raised as it is.
    """
    try:
        yield
    except Exception as err:
        error = hub_error(err, repo_id, **options)
        if error is None:
            raise
        raise error from None


def hub_error(
    err: BaseException,
    repo_id: str,
    *,
    revision: str | None = None,
    not_a_folder: bool = False,
    instead: str | None = None,
    writing: bool = False,
) -> UserError | None:
    """The one line for `err`, raised by huggingface_hub while reaching the Hub for `repo_id`; `None` if it is not
    about the Hub.

    `err` and the exceptions it was raised from (huggingface_hub wraps a failed upload in a `RuntimeError`)
    are read for the first that says what happened: a gated repository, a missing revision or repository,
    the Hub switched off (`HF_HUB_OFFLINE`) or unreachable, a token refused (401) or without the rights
    (403), another answer of the Hub. `not_a_folder`: `repo_id` was given where a local folder would do, so
    the line starts with "no such folder". `instead`: what to do when the Hub cannot provide the repository.
    `writing`: the Hub was asked to change the repository (a push), which a token needs the 'write' role for.
    """
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = constants.ENDPOINT.rstrip("/")
    head = f"no such folder: {repo_id}, and " if not_a_folder else ""
    tail = f"; {instead}" if instead else ""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, GatedRepoError):
            return UserError(
                f"{repo_id} is a gated repository: accept its conditions on the Hub, then log in with `hf auth login`"
            )
        if isinstance(cause, RevisionNotFoundError):
            return UserError(f"the Hub repository {repo_id} has no revision {revision!r}")
        if isinstance(cause, RepositoryNotFoundError):
            return UserError(f"{head}{hub} has no repository {repo_id} (or your token cannot see it){tail}")
        if isinstance(cause, OfflineModeIsEnabled | LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE:
            if writing:
                return UserError("HF_HUB_OFFLINE is set: unset it to write to the Hub")
            return UserError(f"{head}the Hub is switched off (HF_HUB_OFFLINE is set) and its cache has no copy{tail}")
        if isinstance(cause, LocalEntryNotFoundError):  # the download found neither the Hub nor a cached copy
            reason = first_line(cause.__cause__ or cause, named=True)
            return UserError(f"{head}the Hub at {hub} is unreachable ({reason}) and its cache has no copy{tail}")
        if isinstance(cause, HfHubHTTPError):
            return _http_error(cause, repo_id, hub, head, tail, writing)
        if isinstance(cause, httpx2.TransportError | ConnectionError | TimeoutError):
            remedy = tail or "; check your network and HF_ENDPOINT"
            return UserError(f"{head}the Hub at {hub} is unreachable ({first_line(cause, named=True)}){remedy}")
        cause = cause.__cause__
    return None


def _http_error(err, repo_id: str, hub: str, head: str, tail: str, writing: bool) -> UserError:
    status = err.response.status_code if err.response is not None else None
    server = (err.server_message or "").strip()
    detail = f": {server.splitlines()[0]}" if server else ""
    if status == 401:
        return UserError(
            f"the Hub at {hub} rejected your token (401 Unauthorized): set HF_TOKEN to a valid token "
            "or run `hf auth login`"
        )
    if status == 403 and writing:
        return UserError(
            f"your token has no write access to {repo_id} (403 Forbidden{detail}): use a token with the 'write' "
            f"role for the namespace '{repo_id.split('/')[0]}'"
        )
    if status == 403:
        return UserError(f"your token has no access to {repo_id} (403 Forbidden{detail}){tail}")
    answer = f"{status}{detail}" if status is not None else first_line(err, named=True)
    return UserError(f"{head}the Hub at {hub} answered {answer} for {repo_id}{tail}")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint answers one HEAD request within `timeout` seconds (DNS included).

    Without it, a client such as `datasets.load_dataset` on a machine with no network retries for about 20
    seconds before it fails.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    answered, done = threading.Event(), threading.Event()

    def probe() -> None:
        with contextlib.suppress(Exception):  # no HTTP answer of any kind means unreachable
            get_session().head(constants.ENDPOINT, timeout=timeout)
            answered.set()
        done.set()

    threading.Thread(target=probe, daemon=True).start()
    done.wait(timeout)
    return answered.is_set()


def unreachable_hub(what: str, instead: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> UserError:
    """The line for a Hub that `hub_reachable` found silent: what could not be loaded, and what to do instead."""
    from huggingface_hub import constants

    return UserError(
        f"the Hub at {constants.ENDPOINT.rstrip('/')} is unreachable (no answer within {timeout:g} s), so {what} "
        f"cannot be loaded; {instead}, or set HF_HUB_OFFLINE=1 to use a copy already in your cache"
    )


__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "check_pretrained_source",
    "hub_error",
    "hub_errors",
    "hub_reachable",
    "looks_like_local_path",
    "unreachable_hub",
]
