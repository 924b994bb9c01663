"""Durable writes: the one way this code replaces a file that a crash must not leave half-written.

Checkpoints and `latest`, the classifier and reference-statistics caches, `training_options.json`,
the repaired `metrics.jsonl` and the sample grids all go through `write_durably`: the bytes go to a
temporary name beside the target (per process, so two processes filling the same cache never share
one), are flushed and fsynced, the temporary file is renamed onto the target, and the folder is
fsynced so that the rename itself survives a power cut. A failed write removes its temporary file
and leaves the previous file as it was. (`metrics.jsonl` lines are appended and fsynced one by one,
`metrics.append_jsonl`, so a record is never rewritten in place.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (a no-op where the OS cannot open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) refuse fsync on a folder; the rename has still happened
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[IO[Any]], object], mode: str = "wb") -> None:
    """Call `write(f)` on a temporary file beside `path`, fsync it, rename it onto `path`, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    write_durably(path, lambda f: f.write(text), mode="w")


def write_json(path: Path, obj: object) -> None:
    """`obj` as indented JSON with sorted keys (training_options.json, evaluation results)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def why_not_written(e: BaseException, folder: Path) -> str:
    """'the disk is full (12 KiB free on /mnt)' or the system's reason."""
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or isinstance(e, RuntimeError)
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free"
    except OSError:
        free = "free space unknown"
    if full:
        return f"the disk is full ({free})"
    return f"{(e.strerror if isinstance(e, OSError) else None) or e} ({free})"
