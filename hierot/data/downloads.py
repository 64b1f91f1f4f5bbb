"""Files a dataset's tree or splits come from, fetched from their authors' repositories at a
pinned commit and checked against the sha256 recorded here (hierot ships none of them: their
licences are non-commercial or absent)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hierot.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuthorsFile:
    """One file of a paper's repository: its name in hierot's folder, where it comes from,
    and its sha256 (None where no copy could be checked: it is not downloaded)."""

    name: str
    url: str
    sha256: str | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> str:
    """``url`` into ``dest`` (through a temporary file beside it); returns its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                out.write(block)
        digest = sha256_of(Path(tmp))
        os.replace(tmp, dest)
        return digest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def authors_file(folder: Path, file: AuthorsFile, download: bool, option: str) -> Path:
    """``folder / file.name``: there already (the user's copy, read as it is), or, with
    ``download``, fetched from ``file.url`` and kept only if its sha256 is the recorded one;
    otherwise a one-line ``DataError`` saying where to get it."""
    path = folder / file.name
    if path.is_file():
        return path
    if not download:
        raise DataError(
            f"{option}: {path} is missing (data.download=true fetches it from {file.url})"
        )
    if file.sha256 is None:
        raise DataError(
            f"data.download: no checksum is recorded for {file.name}, so hierot does not "
            f"download it; fetch it yourself from {file.url} into {folder}"
        )
    log.info("downloading %s into %s", file.url, path)
    try:
        got = _download(file.url, path)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"data.download: {file.url} into {folder} failed ({reason})") from None
    if got != file.sha256:
        path.unlink()
        raise DataError(
            f"data.download: {file.url} has sha256 {got}, not the recorded {file.sha256} "
            "(a changed or damaged file; removed)"
        )
    return path
