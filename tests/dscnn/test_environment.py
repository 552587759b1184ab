"""dscnn/environment.py's git_revision: the checkout's commit and dirty flag, None outside a checkout."""

from __future__ import annotations

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


def test_outside_a_checkout_or_without_git_it_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # a checkout above /tmp must not count
    assert git_revision(tmp_path) is None
    assert git_revision(tmp_path / "missing") is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all: None, not an exception
    assert git_revision(REPO) is None
