"""The authors' files fetched by processes racing on one folder, as the ranks of a distributed
run do (each reads the metadata before the trainer exists): one download, the others wait
and find it; without locks, each download still lands whole. Served from 127.0.0.1."""

import contextlib
import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hierot.data import downloads
from hierot.data.downloads import AuthorsFile, authors_file
from hierot.errors import DataError

BODY = os.urandom(1 << 18)  # 256 KiB
SHA = hashlib.sha256(BODY).hexdigest()


@contextlib.contextmanager
def slow_server(
    body: bytes = BODY, chunks: int = 16, delay: float = 0.0
) -> Iterator[tuple[str, list[str]]]:
    """Serves ``body`` at every path in ``chunks`` pieces ``delay`` seconds apart (so that
    concurrent downloads overlap); yields the base URL and the list of paths requested."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = -(-len(body) // chunks)
            for i in range(chunks):
                self.wfile.write(body[i * step : (i + 1) * step])
                self.wfile.flush()
                time.sleep(delay)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_leaves_only_the_checked_file(tmp_path):
    with slow_server() as (url, requests):
        file = AuthorsFile("tree.txt", f"{url}/tree.txt", SHA)
        assert authors_file(tmp_path, file, True, "data.info_dir").read_bytes() == BODY
        assert authors_file(tmp_path, file, True, "data.info_dir") == tmp_path / "tree.txt"
        assert requests == ["/tree.txt"]  # the second call found it
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tree.txt"]  # no temp, no lock
        # a wrong checksum: nothing appears, not even for a moment under the real name
        wrong = AuthorsFile("other.txt", f"{url}/other.txt", "0" * 64)
        with pytest.raises(DataError, match=r"^data\.download: .*/other\.txt has sha256 "):
            authors_file(tmp_path, wrong, True, "data.info_dir")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tree.txt"]


def race(context, target, args: tuple, results) -> list:
    """Two processes of ``target(*args)`` started together; what each put on ``results``."""
    workers = [context.Process(target=target, args=args) for _ in range(2)]
    for w in workers:
        w.start()
    got = [results.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    return got


def _race(folder: Path, file: AuthorsFile, barrier, results, lock: bool) -> None:
    if not lock:
        downloads.fcntl = None  # this process only (forked): a filesystem without locks
    barrier.wait(timeout=20)
    try:
        results.put(hashlib.sha256(authors_file(folder, file, True, "x").read_bytes()).hexdigest())
    except Exception as e:  # reported to the test, which fails on it
        results.put(repr(e))


@pytest.mark.slow
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.parametrize("lock", [True, False])
def test_two_processes_fetching_one_file_at_once(tmp_path, lock):
    # ~0.5 s per case: each download takes 16 x 20 ms, both processes start it together
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    with slow_server(delay=0.02) as (url, requests):
        file = AuthorsFile("splits.zip", f"{url}/splits.zip", SHA)
        got = race(context, _race, (tmp_path, file, barrier, results, lock), results)
    assert got == [SHA, SHA]
    # with the lock one process downloads and the other waits, then finds the file
    assert len(requests) == (1 if lock else 2)
    assert (tmp_path / "splits.zip").read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits.zip"]


def _race_cifar(root: Path, barrier, results) -> None:
    from hierot.data import Cifar100DataModule

    barrier.wait(timeout=20)
    try:
        dm = Cifar100DataModule(root=str(root), download=True)
        results.put(len(dm.hierarchy.leaves))  # the release read whole
    except Exception as e:  # reported to the test, which fails on it
        results.put(repr(e))


@pytest.mark.slow
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_two_processes_downloading_cifar_at_once(tmp_path, monkeypatch):
    # ~1 s: torchvision's downloader writes the archive under its own name and extracts it in
    # place, so the second process must wait for the first under the lock
    import tarfile

    import torchvision

    from helpers.benchmarks import COARSE, FINE, PARENT
    from helpers.files import write_cifar100

    write_cifar100(tmp_path / "release", FINE, COARSE, PARENT)
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "release" / "cifar-100-python", arcname="cifar-100-python")
    body = archive.read_bytes()
    release = torchvision.datasets.CIFAR100
    monkeypatch.setattr(release, "tgz_md5", hashlib.md5(body).hexdigest())
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    root = tmp_path / "data"
    with slow_server(body, delay=0.02) as (url, requests):
        monkeypatch.setattr(release, "url", f"{url}/cifar-100-python.tar.gz")
        got = race(context, _race_cifar, (root, barrier, results), results)
    # one process's two requests (torchvision probes for a redirect with a GET first)
    assert got == [len(FINE), len(FINE)] and len(requests) == 2
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python", "cifar-100-python.tar.gz"]
