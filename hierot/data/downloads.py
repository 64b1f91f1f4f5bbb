"""Files a dataset's tree or splits come from, fetched from their authors' repositories at a
pinned commit and checked against the sha256 recorded here (hierot ships none of them: their
licences are non-commercial or absent).

The files are fetched when the metadata is first read, which every process of a distributed
run does before the trainer exists (the model is built from the tree), so downloads are safe
for processes racing on one folder: a file appears only whole and checked (written to a
temporary file beside it, renamed into place), and one process downloads while the others
wait on a lock and then find it there."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hierot.errors import DataError

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent downloads stay whole through the rename
    fcntl = None  # type: ignore[assignment]

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


def lock_file(path: Path) -> Path:
    """The lock file ``download_lock`` holds while ``path`` is fetched (there only then)."""
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def download_lock(path: Path) -> Iterator[None]:
    """Held while ``path`` is fetched (an exclusive ``flock`` on ``.<name>.lock`` beside it):
    the processes that find ``path`` missing at once take turns, so the first downloads and
    the others, re-checking inside, find it there. The lock file is removed on release (a
    process still waiting on the removed file then finds ``path``, or, after a failed
    download, may fetch it beside a newcomer: a duplicate download, never a torn file).
    Where the filesystem refuses locks the processes do not wait; each download is still
    whole, as every one is renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_file(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # e.g. a network filesystem without locks
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)  # releases the lock


def _download(url: str, dest: Path, sha256: str) -> None:
    """``url`` into ``dest`` through a temporary file beside it, renamed into place only if
    its sha256 is ``sha256`` (so no process ever sees a partial or wrong ``dest``)."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                out.write(block)
        got = sha256_of(Path(tmp))
        if got != sha256:
            raise DataError(
                f"data.download: {url} has sha256 {got}, not the recorded {sha256} "
                "(a changed or damaged file; removed)"
            )
        os.replace(tmp, dest)
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
    try:
        with download_lock(path):
            if not path.is_file():  # else another process fetched it while this one waited
                log.info("downloading %s into %s", file.url, path)
                _download(file.url, path, file.sha256)
    except DataError:
        raise
    except (OSError, ValueError) as e:  # ValueError: a malformed URL
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"data.download: {file.url} into {folder} failed ({reason})") from None
    return path
