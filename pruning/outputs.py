"""The files a pruning run writes: checked before any work, written as one unit at the end.

`check_output_paths` runs before the model or the data are loaded: a path that is a folder, or
whose folder cannot be created or written, is a `PruningError` (one line, exit 2 at the CLI)
instead of a traceback after training. `write_together` writes every file to a temp file beside
it (`dscnn.checkpoint.temp_path`), and renames them only once all were written: a failure leaves
none of them, so a pruned model never appears without its report. Temps a killed run left behind
are removed first (`dscnn.checkpoint.remove_stale_temps`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from dscnn.checkpoint import remove_stale_temps, temp_path
from pruning.algorithm import PruningError

Writer = Callable[[Path], object]  # writes the whole file at the path it is given


def check_output_paths(paths: Sequence[tuple[str, Path]]) -> None:
    """Each (what, path): not a folder, and its folder exists or can be created, and is writable."""
    for what, path in paths:
        if path.is_dir():
            raise PruningError(f"{what} {str(path)!r} is a folder; give a file path")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the nearest existing ancestor: the run would create the rest
        if not folder.is_dir():
            raise PruningError(f"{what} {str(path)!r}: {str(folder)!r} is not a folder")
        try:
            temp_path(folder / path.name).unlink()
        except OSError as exc:
            raise PruningError(f"{what} {str(path)!r}: cannot write in {str(folder)!r} ({exc.strerror})") from None


def write_together(files: Sequence[tuple[Path, Writer]]) -> None:
    """Write every (path, writer) to a temp file, then rename all; on any failure none is left."""
    temps: list[Path] = []
    done: list[Path] = []
    try:
        for path, write in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path)
            temps.append(temp_path(path))
            write(temps[-1])
        for (path, _), tmp in zip(files, temps, strict=True):
            os.replace(tmp, path)
            done.append(path)
    except BaseException:
        for path in done:  # a later rename failed: take back the earlier ones
            path.unlink(missing_ok=True)
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
