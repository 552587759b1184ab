"""A record as it reads back from JSON, so that a freshly built key compares equal to a stored one.

Stores key their results by what they were measured or trained for (settings, recipe, data,
architecture); a fresh key holds tuples, paths and dataclass fields that JSON turns into lists and
strings, so comparing it to the stored copy directly would never match and every resume would
redo the work. Every such key goes through `as_stored` before it is compared or written.
"""

from __future__ import annotations

import json
from typing import Any


def as_stored(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` after a JSON round trip: tuples as lists, anything not JSON-native (paths, dtypes) as ``str``."""
    return dict(json.loads(json.dumps(doc, default=str)))
