"""A small Hugging Face Hub for tests: the real `huggingface_hub` and `transformers` clients talk to it.

The real Hub is unreachable from CI, so the tests start this server on 127.0.0.1 and point the clients at it
with `HF_ENDPOINT` (set in the environment before `huggingface_hub` is imported, and with
`HF_HUB_DISABLE_XET=1` so that uploads use the git-LFS protocol instead of Xet storage).

It implements the endpoints the clients use to create a repository, upload a folder (preupload, LFS batch,
upload, verify, NDJSON commit), manage branches and pull requests, and download files (`resolve` with the
headers the cache needs), with the Hub's error headers (`X-Error-Code`, `X-Error-Message`). Storage is in
memory: per repository, branches point at commits, each commit holds the whole file tree, and file contents
are shared by hash. Every request is recorded in `HubServer.requests`, so a test can assert that a command
sent nothing.

Authentication: `WRITE_TOKEN` may write under the namespace `USER`, `READ_TOKEN` may only read (writes
answer 403), any other token answers 401, no token reads public repositories.

    python tests/hub_server.py --port 8000   # then HF_ENDPOINT=http://127.0.0.1:8000 HF_HUB_DISABLE_XET=1 ...
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
WRITE_TOKEN = "hf_local_test_write_token"
READ_TOKEN = "hf_local_test_read_token"

# The .gitattributes the Hub writes into every new model repository (abridged); files matching it go to LFS.
LFS_PATTERNS = (
    "*.bin",
    "*.ckpt",
    "*.gz",
    "*.h5",
    "*.msgpack",
    "*.npy",
    "*.onnx",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.safetensors",
    "*.tar",
    "*.zip",
    "*tfevents*",
)
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_THRESHOLD = 10 * 1024 * 1024
# An LFS pointer file is what git stores for an LFS file; its git hash is the file's git `oid`.
POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def git_blob_oid(data: bytes) -> str:
    """Git's object id of a blob: sha1 over `blob <size>\\0<data>`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An error answer: HTTP status, the Hub's `X-Error-Code` (optional) and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: str):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass(frozen=True)
class Entry:
    """A file in a commit's tree: its size, git oid and, for an LFS file, its sha256 (the storage key)."""

    size: int
    oid: str
    sha256: str | None = None


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, Entry]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    pull_requests: int = 0

    def resolve(self, revision: str) -> Commit:
        """The commit a branch name, `refs/pr/N`, `refs/heads/x` or a commit sha points at."""
        name = revision.removeprefix("refs/heads/")
        if name in self.branches:
            return self.commits[self.branches[name]]
        if revision in self.commits:
            return self.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def log(self, revision: str) -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        commit: Commit | None = self.resolve(revision)
        history = []
        while commit is not None:
            history.append(commit)
            commit = self.commits[commit.parent] if commit.parent else None
        return history


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int


class HubState:
    """Everything the server stores; tests read it directly (`repos`, `requests`) to check what was sent."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git oid of regular files and sha256 of LFS files -> content
        self.requests: list[Request] = []
        self._counter = 0

    def new_commit(self, repo: Repo, branch: str, title: str, message: str, files: dict[str, Entry]) -> Commit:
        self._counter += 1
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}\0{parent}\0{title}\0{sorted(files.items())}\0{self._counter}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, files)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def store(self, data: bytes, lfs: bool) -> Entry:
        oid = git_blob_oid(data)
        if not lfs:
            self.blobs[oid] = data
            return Entry(len(data), oid)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return Entry(len(data), git_blob_oid(POINTER.format(oid=sha, size=len(data)).encode()), sha)

    def file_bytes(self, entry: Entry) -> bytes:
        return self.blobs[entry.sha256 or entry.oid]


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "agent_harnesses"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/refs", "refs"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)", "create_branch"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
        ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
        ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]


class Handler(BaseHTTPRequestHandler):
    """One request: route it, check the token, answer JSON, bytes or an error with the Hub's headers."""

    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        """Requests are recorded in `HubState.requests`, not printed."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    # -- plumbing -------------------------------------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host', '127.0.0.1')}"

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # Always read the whole body first: answering early garbles the next request on a kept-alive socket.
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 500
        try:
            for method, pattern, handler in ROUTES:
                match = pattern.fullmatch(url.path)
                if method == self.command and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with self.state.lock:
                        status = getattr(self, handler)(**params)
                    break
            else:
                raise HubError(404, f"No such endpoint: {self.command} {url.path}")
        except HubError as err:
            status = err.status
            self._send(err.status, json.dumps({"error": err.message, **err.extra}).encode(), "application/json", err)
        finally:
            with self.state.lock:
                self.state.requests.append(Request(self.command, self.path, status))

    def _send(self, status: int, body: bytes, ctype: str, err: HubError | None = None, **headers: str) -> int:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if err is not None:
            self.send_header("X-Error-Message", err.message)
            if err.code:
                self.send_header("X-Error-Code", err.code)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _json(self, payload: object, status: int = 200) -> int:
        return self._send(status, json.dumps(payload).encode(), "application/json")

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return (auth.removeprefix("Bearer ").strip() or None) if auth.startswith("Bearer ") else None

    def _auth(self, write: bool = False, namespace: str | None = None) -> None:
        """Check the Authorization header: 401 for an unknown token, 403 for a write it may not do."""
        token = self._token()
        if token is not None and token not in (WRITE_TOKEN, READ_TOKEN):
            raise HubError(401, "Invalid credentials in Authorization header")
        if not write:
            return
        if token is None:
            raise HubError(401, "You must be authenticated to write to the Hub")
        if token == READ_TOKEN:
            raise HubError(403, "You don't have the rights to write with a read-only token")
        if namespace is not None and namespace != USER:
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        self._auth(write, namespace=repo_id.split("/")[0] if write else None)
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and self._token() is None):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from None

    # -- endpoints ------------------------------------------------------------------------------------------

    def whoami(self) -> int:
        self._auth()
        token = self._token()
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        role = "write" if token == WRITE_TOKEN else "read"
        return self._json(
            {
                "type": "user",
                "name": USER,
                "fullname": "Test User",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
            }
        )

    def agent_harnesses(self) -> int:
        """The registry huggingface_hub fetches to name the AI agent in its user agent: empty here."""
        return self._json({"standardEnvVars": [], "harnesses": {}})

    def create_repo(self) -> int:
        body = self._json_body()
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        self._auth(write=True, namespace=repo_id.split("/")[0])
        if body.get("type", "model") != "model":
            raise HubError(400, "This test server only hosts model repositories")
        if repo_id in self.state.repos:
            raise HubError(409, "You already created this model repo", url=f"{self.base_url}/{repo_id}")
        private = body.get("private") or body.get("visibility") == "private"
        repo = self.state.repos[repo_id] = Repo(repo_id, bool(private))
        entry = self.state.store(GITATTRIBUTES, lfs=False)
        self.state.new_commit(repo, "main", "initial commit", "", {".gitattributes": entry})
        return self._json({"url": f"{self.base_url}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self) -> int:
        content = self._json_body().get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return self._json({"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []}, 400)
        if metadata is not None and not isinstance(metadata, dict):
            return self._json({"errors": [{"message": "Metadata must be a YAML mapping"}], "warnings": []}, 400)
        return self._json({"errors": [], "warnings": []})

    def repo_info(self, repo: str, rev: str = "main") -> int:
        commit = self._repo(repo).resolve(rev)
        return self._json(
            {
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit.sha,
                "private": self.state.repos[repo].private,
                "lastModified": commit.date,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }
        )

    def _file_info(self, path: str, entry: Entry) -> dict:
        info = {"type": "file", "path": path, "size": entry.size, "oid": entry.oid}
        if entry.sha256 is not None:
            pointer_size = len(POINTER.format(oid=entry.sha256, size=entry.size))
            info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": pointer_size}
        return info

    def tree(self, repo: str, rev: str, path: str = "") -> int:
        files = self._repo(repo).resolve(rev).files
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        listing: dict[str, dict] = {}
        for file_path, entry in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            folders = rest.split("/")[:-1]
            for depth in range(1, len(folders) + 1 if recursive else min(len(folders), 1) + 1):
                folder = prefix + "/".join(folders[:depth])
                listing.setdefault(folder, {"type": "directory", "path": folder, "size": 0, "oid": "0" * 40})
            if recursive or not folders:
                listing[file_path] = self._file_info(file_path, entry)
        return self._json(list(listing.values()))

    def refs(self, repo: str) -> int:
        r = self._repo(repo)

        def ref(name: str, sha: str) -> dict:
            full = name if name.startswith("refs/") else f"refs/heads/{name}"
            return {"name": name, "ref": full, "targetCommit": sha}

        branches = [ref(n, s) for n, s in r.branches.items() if not n.startswith("refs/pr/")]
        prs = [ref(n, s) for n, s in r.branches.items() if n.startswith("refs/pr/")]
        return self._json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def create_branch(self, repo: str, rev: str) -> int:
        r = self._repo(repo, write=True)
        if rev in r.branches:
            raise HubError(409, f"Reference refs/heads/{rev} already exists")
        start = r.resolve(self._json_body().get("startingPoint") or "main")
        r.branches[rev] = start.sha
        return self._json({})

    def preupload(self, repo: str, rev: str) -> int:
        r = self._repo(repo, write=True)
        files = r.resolve(rev).files
        answer = []
        for item in self._json_body().get("files", []):
            lfs = _is_lfs(item["path"], item["size"], base64.b64decode(item.get("sample", "")))
            entry = files.get(item["path"])
            oid = None if entry is None else (entry.sha256 or entry.oid) if lfs else entry.oid
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return self._json({"files": answer, "commitOid": r.resolve(rev).sha})

    def lfs_batch(self, repo: str) -> int:
        self._repo(repo, write=True)
        objects = []
        for obj in self._json_body().get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.blobs:
                href = f"{self.base_url}/_lfs/{obj['oid']}"
                answer["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(answer)
        return self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            "application/vnd.git-lfs+json",
        )

    def lfs_upload(self, oid: str) -> int:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256")
        self.state.blobs[oid] = self.body
        return self._send(200, b"", "text/plain")

    def lfs_verify(self, oid: str) -> int:
        data = self.state.blobs.get(oid)
        if data is None or len(data) != self._json_body().get("size"):
            raise HubError(404, f"LFS object {oid} was not uploaded")
        return self._json({"success": True})

    def commit(self, repo: str, rev: str) -> int:
        r = self._repo(repo, write=True)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        head = r.resolve(rev)
        files = dict(head.files)
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = self.state.store(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.state.blobs.get(value["oid"])
                if data is None:
                    raise HubError(400, f"LFS file {value['path']} was not uploaded before the commit")
                files[value["path"]] = self.state.store(data, lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(folder)}
        branch = rev.removeprefix("refs/heads/")
        answer: dict[str, str] = {}
        if self.query.get("create_pr") == "1":
            r.pull_requests += 1
            branch = f"refs/pr/{r.pull_requests}"
            r.branches[branch] = head.sha
            answer["pullRequestUrl"] = f"{self.base_url}/{repo}/discussions/{r.pull_requests}"
        elif branch not in r.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        commit = self.state.new_commit(r, branch, header.get("summary", ""), header.get("description", ""), files)
        answer.update(commitOid=commit.sha, commitUrl=f"{self.base_url}/{repo}/commit/{commit.sha}")
        return self._json(answer)

    def resolve(self, repo: str, rev: str, path: str) -> int:
        r = self._repo(repo)
        commit = r.resolve(rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        data = self.state.file_bytes(entry)
        headers = {"X_Repo_Commit": commit.sha, "ETag": f'"{entry.oid}"', "Accept_Ranges": "bytes"}
        if entry.sha256 is not None:
            headers.update(X_Linked_Etag=f'"{entry.sha256}"', X_Linked_Size=str(entry.size))
        status, start = 200, 0
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, end = int(match[1]), int(match[2]) if match[2] else len(data) - 1
            headers["Content_Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        return self._send(status, data, "application/octet-stream", **headers)


class HubServer(ThreadingHTTPServer):
    """The Hub on 127.0.0.1 (a free port by default); `start()` serves it from a thread, `url` is its URL."""

    daemon_threads = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), Handler)
        self.state = HubState()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.requests)

    def repo(self, repo_id: str) -> Repo:
        return self.state.repos[repo_id]

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """The content of `path` at `revision`, as stored."""
        with self.state.lock:
            return self.state.file_bytes(self.repo(repo_id).resolve(revision).files[path])

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    port = parser.parse_args().port
    print(f"local Hub on http://127.0.0.1:{port}  write token: {WRITE_TOKEN}  read-only token: {READ_TOKEN}")
    HubServer(port).serve_forever()
