"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one: every file the
toolkit writes (checkpoints, metrics, run.json, submissions, figures, the image cache's index) goes through
`atomic_write`."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | Path, write):
    """Call write(tmp_path), flush it to disk, then move it over `path` in one step: `path` holds either its
    previous content or the whole new one. The temporary file is removed if anything fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
