"""What `staged` writes appears with the permissions of a folder or file made the ordinary way (the umask's)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modeling_pg_gpt2.common.outputs import current_umask, staged


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_staged_folders_and_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        with staged(tmp_path / "prepared", "folder") as staging:
            (staging / "blocks.arrow").write_bytes(b"blocks")
        with staged(tmp_path / "model.gguf", "file") as staging:
            staging.write_bytes(b"GGUF")
        (tmp_path / "plain").mkdir()  # the oracle: made the ordinary way under the same umask
        (tmp_path / "plain.gguf").write_bytes(b"GGUF")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "prepared") == mode(tmp_path / "plain") == 0o777 & ~umask
    assert mode(tmp_path / "model.gguf") == mode(tmp_path / "plain.gguf") == 0o666 & ~umask
