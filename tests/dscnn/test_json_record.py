"""A fresh key and its stored JSON copy compare equal (else every resume would redo its work)."""

from __future__ import annotations

import json
from pathlib import Path

from dscnn.json_record import as_stored


def test_a_key_equals_its_stored_copy(tmp_path: Path) -> None:
    key = {"settings": {"shape": (1, 3, 32, 32), "path": tmp_path / "a.pt"}, "archs": {"x": "abc"}, "n": 2}
    stored = tmp_path / "key.json"
    stored.write_text(json.dumps(as_stored(key)))
    assert as_stored(key) == json.loads(stored.read_text())
    assert as_stored(key)["settings"] == {"shape": [1, 3, 32, 32], "path": str(tmp_path / "a.pt")}
    assert key != json.loads(stored.read_text())  # why the round trip is needed
