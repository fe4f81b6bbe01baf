"""Small-file writes that a crash or a concurrent reader never sees half done."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, tmp: str | Path | None = None) -> None:
    """Write `text` to `path` through a temporary file beside it (default `.<name>.tmp`) renamed over it: readers
    and a restarted process find the old file or the new one, never part of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp") if tmp is None else Path(tmp)
    tmp.write_text(text)
    os.replace(tmp, path)
