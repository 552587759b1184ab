"""dscnn/environment.py's git_revision: the checkout's commit and dirty flag, None outside a checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dscnn.environment import git_revision

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
def test_inside_the_repository_it_is_head_and_a_dirty_flag() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for where in (None, REPO, REPO / "dscnn"):  # the default is this package's checkout; any folder inside it works
        revision = git_revision(where)
        assert revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision["commit"])
        assert revision["commit"] == head.strip() and isinstance(revision["dirty"], bool)


def _one_commit(folder: Path) -> Path:
    """A fresh checkout in ``folder`` with one committed file (a local identity: the machine may have none)."""
    for args in (("init", "-q"), ("config", "user.name", "test"), ("config", "user.email", "test@example.com")):
        subprocess.run(["git", *args], cwd=folder, check=True)
    tracked = folder / "code.py"
    tracked.write_text("x = 1\n")
    subprocess.run(["git", "add", "code.py"], cwd=folder, check=True)
    subprocess.run(["git", "commit", "-q", "--no-gpg-sign", "-m", "one file"], cwd=folder, check=True)
    return tracked


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dirty_means_a_tracked_file_differs_from_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # never the checkout above /tmp

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    tracked = _one_commit(tmp_path)
    assert git_revision(tmp_path) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (tmp_path / "results.json").write_text("{}")
    assert git_revision(tmp_path) == {"commit": git("rev-parse", "HEAD"), "dirty": False}  # untracked: not dirty
    tracked.write_text("x = 2\n")
    assert git_revision(tmp_path) == {"commit": git("rev-parse", "HEAD"), "dirty": True}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_it_never_rewrites_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain `git status` refreshes stale stat data into .git/index under .git/index.lock, which
    makes a concurrent `git commit` in the checkout fail; the revision is read without optional locks."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    tracked = _one_commit(tmp_path)
    os.utime(tracked, (978307200, 978307200))  # same content, stale stat data: status would write the index
    index = (tmp_path / ".git" / "index").read_bytes()
    revision = git_revision(tmp_path)
    assert revision is not None and revision["dirty"] is False
    assert (tmp_path / ".git" / "index").read_bytes() == index


def test_outside_a_checkout_or_without_git_it_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # a checkout above /tmp must not count
    assert git_revision(tmp_path) is None
    assert git_revision(tmp_path / "missing") is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all: None, not an exception
    assert git_revision(REPO) is None
