"""Files written whole or not at all: a reader (a sweep summary, a resumed run, another job)
sees the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from hierot.errors import DiskFull


def no_space(path: Path, needed: int) -> DiskFull:
    """The one-line error of a write of ``needed`` bytes to ``path`` that ran out of space."""
    try:
        free = f"{shutil.disk_usage(path.parent).free} bytes free"
    except OSError:
        free = "free space unknown"
    return DiskFull(
        f"no space left on the device of {path}: writing it needs {needed} bytes ({free})"
    )


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file beside ``path`` (named by this process, so that
    jobs writing the same file at once do not share one), flush it to disk, then rename it
    over ``path``: a kill at any instant leaves either the old file or the new one, whole.
    Lack of space is a ``DiskFull`` naming the path and the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(path, len(data)) from None
        raise


def write_json(path: Path, data: object) -> None:
    """``data`` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_rows(
    path: Path, names: Sequence[str], rows: Sequence[Mapping[str, object]], header: Sequence[str]
) -> None:
    """A CSV of ``rows`` (columns ``names``, titled ``header``; None as empty), atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(names), extrasaction="ignore")
    writer.writerow(dict(zip(names, header, strict=True)))
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    write_atomic(path, text.getvalue().encode())
