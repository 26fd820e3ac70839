"""common/sources.py: where a model comes from, and every way the Hub can fail said in one line, against the local
test Hub (tests/hub_server.py) with the real huggingface_hub client."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hub_server import READ_TOKEN, HubServer, Repo
from huggingface_hub import HfApi, constants, hf_hub_download

from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.common.sources import check_pretrained_source, hub_errors, hub_reachable

REPO = "tester/tiny"


@pytest.fixture(scope="module")
def server():
    hub = HubServer().start()
    with hub.state.lock:
        repo = hub.state.repos[REPO] = Repo(REPO, private=False)
        hub.state.new_commit(repo, "main", "upload", "", {"config.json": hub.state.store(b"{}", lfs=False)})
    yield hub
    hub.stop()


@pytest.fixture
def hub(server, monkeypatch):
    """The test Hub as the endpoint the messages name (the client is given it explicitly)."""
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    return server


def refusal(call, **options) -> str:
    """The one line `hub_errors(REPO-or-named, **options)` turns what `call()` raises into."""
    repo_id = options.pop("repo_id", REPO)
    with pytest.raises(UserError) as caught, hub_errors(repo_id, **options):
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_missing_repository_or_revision(hub):
    api = HfApi(endpoint=hub.url)
    missing = refusal(
        lambda: api.model_info("tester/none"), repo_id="tester/none", not_a_folder=True, instead="pass X"
    )
    assert missing == (
        f"no such folder: tester/none, and {hub.url} has no repository tester/none (or your token cannot see it); "
        "pass X"
    )
    revision = refusal(lambda: api.model_info(REPO, revision="v9"), revision="v9")
    assert revision == f"the Hub repository {REPO} has no revision 'v9'"


def test_a_refused_token_and_a_token_without_write_rights(hub):
    unknown = refusal(lambda: HfApi(endpoint=hub.url, token="hf_not_a_token").whoami())
    assert unknown.startswith(f"the Hub at {hub.url} rejected your token (401 Unauthorized)")
    read_only = HfApi(endpoint=hub.url, token=READ_TOKEN)
    push = refusal(lambda: read_only.create_repo("tester/new"), repo_id="tester/new", writing=True)
    assert push.startswith("your token has no write access to tester/new (403 Forbidden: You don't have the rights")
    assert "'write' role for the namespace 'tester'" in push


def test_the_cause_of_a_wrapped_error_is_what_is_said(hub):
    """huggingface_hub raises a RuntimeError from the HTTP error of a failed LFS upload."""

    def failed_upload() -> None:
        try:
            HfApi(endpoint=hub.url, token="hf_not_a_token").whoami()
        except Exception as err:
            raise RuntimeError("Error while uploading 'model.safetensors' to the Hub.") from err

    assert "rejected your token (401 Unauthorized)" in refusal(failed_upload, writing=True)


def test_an_unreachable_hub(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    down = refusal(lambda: HfApi(endpoint=url).model_info(REPO), not_a_folder=True, instead="pass X")
    assert down.startswith(f"no such folder: {REPO}, and the Hub at {url} is unreachable (ConnectError: ")
    assert down.endswith("; pass X")
    whoami = HfApi(endpoint=url, token="hf_any").whoami
    assert refusal(whoami, writing=True).endswith("; check your network and HF_ENDPOINT")


def test_the_hub_switched_off(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    download = refusal(
        lambda: hf_hub_download(REPO, "config.json", cache_dir=tmp_path), not_a_folder=True, instead="pass X"
    )
    assert download == (
        f"no such folder: {REPO}, and the Hub is switched off (HF_HUB_OFFLINE is set) and its cache has no copy; "
        "pass X"
    )
    push = refusal(lambda: HfApi(endpoint=hub.url, token=READ_TOKEN).create_repo("tester/new"), writing=True)
    assert push == "HF_HUB_OFFLINE is set: unset it to write to the Hub"


def test_errors_that_are_not_about_the_hub_pass_through():
    with pytest.raises(KeyError), hub_errors(REPO):
        raise KeyError("config")
    with pytest.raises(RuntimeError, match="not the Hub"), hub_errors(REPO):
        raise RuntimeError("not the Hub") from ValueError("nor this")


def test_hub_reachable_needs_an_answer(hub):
    assert hub_reachable(timeout=60)  # returns as soon as the answer is in
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        constants.ENDPOINT = f"http://127.0.0.1:{silent.getsockname()[1]}"  # restored by `hub`'s monkeypatch
        assert not hub_reachable(timeout=0.5)


def test_a_source_is_a_folder_or_a_hub_id(hub, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    check_pretrained_source(tmp_path)  # a folder: nothing asked
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match=r"file.txt is a file; pass the tokenizer folder \(or a Hub repository id\)"):
        check_pretrained_source(tmp_path / "file.txt", "tokenizer")
    before = len(hub.requests)
    with pytest.raises(UserError, match=r"^no such folder: ./missing; pass an existing model folder"):
        check_pretrained_source("./missing")
    assert len(hub.requests) == before, "a path is not looked up on the Hub"
    check_pretrained_source(REPO)  # on the Hub
    with pytest.raises(UserError, match=f"no such folder: tester/none, and {hub.url} has no repository"):
        check_pretrained_source("tester/none")
