"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one: every file the
toolkit writes (checkpoints, metrics, run.json, submissions, figures, the image cache's index) goes through
`atomic_write`."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from errors import UsageError


class WriteError(UsageError, OSError):
    """A file could not be written (a full disk, a read-only folder); the previous version is untouched."""


def atomic_write(path: str | Path, write):
    """Call write(tmp_path), flush it to disk, then move it over `path` in one step: `path` holds either its
    previous content or the whole new one. The temporary file is removed if anything fails, and a failure is
    a WriteError that says so."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        message, full = _why_not_written(path, e)
        # A full disk stops a training run where it can be continued from once space is freed.
        raise WriteError(message, option="resume" if full else None,
                         fix="continue an interrupted training run" if full else None) from e
    finally:
        tmp.unlink(missing_ok=True)


def _why_not_written(path: Path, error: BaseException) -> tuple[str, bool]:
    """What went wrong, and whether it was a full disk."""
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 2**20) \
        or "unexpected pos" in str(error) or "No space left" in str(error)
    if full:
        return (f"could not write {path}: no space left on the device of {path.parent}"
                f"{f' ({free / 2**20:,.1f} MB free)' if free is not None else ''}; {kept}. Free some space and "
                "run the command again"), True
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"could not write {path} ({first}); {kept}", False


def atomic_write_text(path: str | Path, text: str):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
