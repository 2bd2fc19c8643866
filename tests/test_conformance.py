"""Every kind of source passes the conformance suites of ``dsmirror.testing.conformance``.

Sources: ``MemorySource``; ``HttpSource`` on a ``MirrorServer`` (with each of its faults), on a
server that sends chunked bodies (no Content-Length: the source must count), and through the
registries' ``RepoURLs`` against loopback ``dsmirror._serve`` apps (Hugging Face ``resolve`` URLs,
as a folder and as the HF cache's ``blobs/<etag>`` paths; an Ollama registry that redirects blobs
to its CDN). And the suites catch broken sources: a suite that cannot fail is a defect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from conftest import CliProcess, addr, free_port
from dsmirror._core.errors import BadResponse, PieceMismatch, SourceNotFound, SourceUnavailable
from dsmirror._core.events import Event
from dsmirror._fetch.broker import PieceBroker
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.local import MemorySource, local_source_info
from dsmirror._fetch.reuse import LocalIndex, LocalReuse, reuse_local
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import FileEntry, Manifest, Piece
from dsmirror._formats.ollama import parse_ollama_name
from dsmirror._journal.store import Store
from dsmirror._resolve.registries.client import RepoURLs
from dsmirror._resolve.registries.hf import _hf_template
from dsmirror._resolve.registries.ollama import _blob_template
from dsmirror._schedule.info import SourceInfo
from dsmirror._schedule.scheduler import Assignment
from dsmirror._serve import HfRepo, ModelIndex, OllamaModel, ServeFaults, ServerThread, make_app
from dsmirror.testing import Faults, MirrorServer
from dsmirror.testing.conformance import (
    RETRY_AFTER,
    ConformanceFailure,
    ConformanceReport,
    ServerFault,
    check_local_reuse,
    check_piece_source,
    check_source,
)

pytestmark = pytest.mark.timeout(300)

Files = Mapping[str, bytes]


def _write(root: Path, files: Files) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


class _Servers:
    """Servers a test's factories start, each in its own folder; all stopped after the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._stops: list[Callable[[], None]] = []
        self._n = 0

    def folder(self, files: Files) -> Path:
        self._n += 1
        return _write(self.tmp / f"served{self._n}", files)

    def mirror(self, files: Files, faults: Faults | None = None) -> MirrorServer:
        m = MirrorServer(self.folder(files), faults=faults)
        m.start()
        self._stops.append(m.stop)
        return m

    def app(self, index: ModelIndex, **kw: Any) -> ServerThread:
        server = ServerThread(make_app(index, **kw)).start()
        self._stops.append(server.stop)
        return server

    def on_stop(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def stop(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[_Servers]:
    s = _Servers(tmp_path)
    yield s
    s.stop()


def _all_faults_checked(report: ConformanceReport, *, except_: set[ServerFault] = frozenset()) -> None:
    assert set(report.skipped) == {f"fault: {f.value}" for f in except_}, report.skipped


# -- MemorySource --------------------------------------------------------------------------------
def _memory(files: Files) -> Source:
    return MemorySource(local_source_info("memory"), dict(files))


def test_memory_source() -> None:
    report = check_source(_memory)
    assert "threads" in report.checks and "past the end" in report.checks


# -- HttpSource on a MirrorServer ----------------------------------------------------------------
_MIRROR_FAULTS = {
    ServerFault.RESET: Faults(reset_after=10_000),
    ServerFault.TRUNCATED: Faults(short_body=True),
    ServerFault.STALL: Faults(stall_after=1_000, stall_seconds=30),
    ServerFault.WRONG_RANGE: Faults(wrong_content_range=True),
    ServerFault.WHOLE_FILE: Faults(ignore_range=True),
    ServerFault.HTML_PAGE: Faults(html_instead=True),
    ServerFault.UNAVAILABLE: Faults(status=500),
    ServerFault.RATE_LIMITED: Faults(status=429, retry_after=RETRY_AFTER),
    ServerFault.NOT_FOUND: Faults(status=404),
}


def _http(url: str, *, kind: str = "http", url_for: Callable[[FileEntry], str] | None = None) -> HttpSource:
    host = urlsplit(url).hostname or "?"
    return HttpSource(
        SourceInfo("m1", kind, host, max_connections=4),
        url_for or (lambda f: url + quote(f.path)),
        stall_timeout=1.0,
    )


def test_http_source_on_a_mirror(servers: _Servers) -> None:
    def make(files: Files) -> Source:
        return _http(servers.mirror(files).url)

    def faulty(files: Files, fault: ServerFault) -> Source | None:
        if fault is ServerFault.DOWN:
            m = servers.mirror(files)
            m.set_down(True)
            return _http(m.url)
        faults = _MIRROR_FAULTS.get(fault)
        return None if faults is None else _http(servers.mirror(files, faults).url)

    report = check_source(make, make_faulty=faulty)
    _all_faults_checked(report, except_={ServerFault.SHORT_ANSWER, ServerFault.LONG_ANSWER})


# -- HttpSource on a server that sends chunked bodies --------------------------------------------
class _ChunkedHandler(BaseHTTPRequestHandler):
    """Range answers with ``Transfer-Encoding: chunked``: no Content-Length to hold the body to."""

    protocol_version = "HTTP/1.1"
    server: _ChunkedServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = self.server.files.get(unquote(urlsplit(self.path).path).lstrip("/"))
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if data is None or m is None:
            self._small(404)
            return
        start, end = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
        if start >= len(data):
            self._small(416)
            return
        body = data[start : end + 1]
        if self.server.fault is ServerFault.SHORT_ANSWER:
            body = body[: len(body) // 2]
        elif self.server.fault is ServerFault.LONG_ANSWER:
            body += data[end + 1 : end + 1000] + b"\0"
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for k in range(0, len(body), 48 << 10):
            part = body[k : k + (48 << 10)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def _small(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _ChunkedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: Files, fault: ServerFault | None) -> None:
        super().__init__(("127.0.0.1", 0), _ChunkedHandler)
        self.files = dict(files)
        self.fault = fault
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def test_http_source_on_a_chunked_server(servers: _Servers) -> None:
    def start(files: Files, fault: ServerFault | None = None) -> Source:
        server = _ChunkedServer(files, fault)
        servers.on_stop(server.stop)
        return _http(server.url)

    def faulty(files: Files, fault: ServerFault) -> Source | None:
        if fault in (ServerFault.SHORT_ANSWER, ServerFault.LONG_ANSWER):
            return start(files, fault)
        return None

    report = check_source(start, make_faulty=faulty)
    assert "fault: short-answer" in report.checks and "fault: long-answer" in report.checks


# -- HttpSource through the registries' RepoURLs, against dsmirror._serve apps -------------------
_REPO = "org/tiny"


def _app_faults(fault: ServerFault, keys: list[str]) -> ServeFaults | None:
    status = {ServerFault.UNAVAILABLE: 500, ServerFault.RATE_LIMITED: 429, ServerFault.NOT_FOUND: 404}
    if fault not in status:
        return None
    return ServeFaults(status_for_paths=dict.fromkeys(keys, status[fault]), retry_after=RETRY_AFTER)


def _registry_faulty(
    start: Callable[[Files, ServeFaults | None], Source],
    keys: Callable[[Files], list[str]],
    servers: _Servers,
) -> Callable[[Files, ServerFault], Source | None]:
    def faulty(files: Files, fault: ServerFault) -> Source | None:
        if fault is ServerFault.DOWN:
            source = start(files, None)
            servers.stop()  # everything started so far is done with; the new one goes down too
            return source
        faults = _app_faults(fault, keys(files))
        return None if faults is None else start(files, faults)

    return faulty


_APP_FAULTS = {ServerFault.UNAVAILABLE, ServerFault.RATE_LIMITED, ServerFault.NOT_FOUND, ServerFault.DOWN}


@pytest.mark.parametrize("layout", ["folder", "hf-cache"])
def test_http_source_on_a_hugging_face_registry(servers: _Servers, layout: str) -> None:
    """``resolve`` URLs of one commit; an ``hf-cache`` pull names files ``blobs/<sha256>`` (mapped)."""
    repo_path: dict[str, str] = {}

    def path_for(name: str, data: bytes) -> str:
        if layout == "folder":
            return name
        path = f"blobs/{hashlib.sha256(data).hexdigest()}"
        repo_path[path] = name
        return path

    def start(files: Files, faults: ServeFaults | None) -> Source:
        repo_files = {repo_path.get(p, p): data for p, data in files.items()}
        repo = HfRepo.from_folder(_REPO, servers.folder(repo_files))
        server = servers.app(ModelIndex(hf_repos=[repo]), faults=faults)
        urls = RepoURLs("m1", _hf_template(server.url, _REPO, repo.commit), dict(repo_path))
        return _http(server.url, kind="hf", url_for=urls)

    def keys(files: Files) -> list[str]:
        return [repo_path.get(p, p) for p in files]

    report = check_source(
        lambda files: start(files, None),
        make_faulty=_registry_faulty(start, keys, servers),
        path_for=path_for,
    )
    _all_faults_checked(report, except_=set(ServerFault) - _APP_FAULTS)


def test_http_source_on_an_ollama_registry(servers: _Servers) -> None:
    """Blobs by digest from a registry that answers 307 to its CDN, as registry.ollama.ai does."""
    name = parse_ollama_name("library/tiny:latest")

    def path_for(_name: str, data: bytes) -> str:
        return f"blobs/sha256-{hashlib.sha256(data).hexdigest()}"

    def start(files: Files, faults: ServeFaults | None) -> Source:
        folder = servers.folder({p.replace("blobs/", "layers/"): d for p, d in files.items()})
        layers = [
            ("application/vnd.ollama.image.model", folder / p.replace("blobs/", "layers/")) for p in files
        ]
        model = OllamaModel.from_files(
            name.namespace, name.name, name.tag, layers, b'{"model_format":"gguf"}'
        )
        index = ModelIndex(ollama_models=[model])
        cdn = servers.app(index)
        registry = servers.app(index, blob_redirect_to=cdn.url, faults=faults)
        urls = RepoURLs("m1", _blob_template(registry.url, name), {})
        return _http(registry.url, kind="ollama", url_for=urls)

    def keys(files: Files) -> list[str]:
        return ["sha256:" + p.removeprefix("blobs/sha256-") for p in files]

    report = check_source(
        lambda files: start(files, None),
        make_faulty=_registry_faulty(start, keys, servers),
        path_for=path_for,
    )
    _all_faults_checked(report, except_=set(ServerFault) - _APP_FAULTS)


# -- local reuse ---------------------------------------------------------------------------------
def test_local_reuse(tmp_path: Path) -> None:
    report = check_local_reuse(tmp_path)
    assert "never a wrong byte" in report.checks and "nothing missed" in report.checks


def _trusting(store: Store, index: LocalIndex) -> Iterator[Event]:
    """Copies a same-path file's bytes at the same offsets, without hashing them."""
    m = store.manifest
    done = 0
    for piece in m.pieces:
        for root in [*index.same_path, *index.roots]:
            path = root / piece.path
            if (
                store.is_done(piece.index)
                or not path.is_file()
                or path.stat().st_size != m.files[piece.file_index].size
            ):
                continue
            with open(path, "rb") as fh:
                fh.seek(piece.offset)
                store.write(piece, 0, fh.read(piece.length))
            store.mark_verified(piece)
            done += piece.length
    yield LocalReuse(done, 0, {}, done, 0.0)


def _forgetful(store: Store, index: LocalIndex) -> Iterator[Event]:
    yield LocalReuse(0, 0, {}, 0, 0.0)


def _repairs_in_place(store: Store, index: LocalIndex) -> Iterator[Event]:
    """Reuses, then 'helpfully' writes the good pieces back into the destination's stale copy."""
    yield from reuse_local(store, index)
    m = store.manifest
    f = m.file("sub/in-dest.bin")
    with open(store.dest / f.path, "r+b") as fh:
        for i in m.file_piece_ranges[m.files.index(f)]:
            if store.is_done(i):
                fh.seek(m.pieces[i].offset)
                fh.write(store.read_piece(m.pieces[i]))


def _miscounts(store: Store, index: LocalIndex) -> Iterator[Event]:
    for ev in reuse_local(store, index):
        yield dataclasses.replace(ev, reused_bytes=2 * ev.reused_bytes) if isinstance(ev, LocalReuse) else ev


@pytest.mark.parametrize(
    ("reuse", "broken"),
    [
        (_trusting, "never a wrong byte"),
        (_forgetful, "nothing missed"),
        (_repairs_in_place, "candidates untouched"),
        (_miscounts, "reported"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_the_suite_catches_broken_local_reuse(
    tmp_path: Path, reuse: Callable[[Store, LocalIndex], Iterator[Event]], broken: str
) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        check_local_reuse(tmp_path, reuse=reuse)
    assert broken in [f.split(":")[0] for f in caught.value.failures], caught.value.failures


# -- the BitTorrent swarm: a real libtorrent seeder on 127.0.0.1 ----------------------------------
@pytest.mark.slow
def test_swarm_source(tmp_path: Path, seeder: Callable[..., CliProcess]) -> None:
    from dsmirror._fetch.swarm.config import SwarmConfig
    from dsmirror._fetch.swarm.source import SwarmSource
    from dsmirror._fetch.swarm.torrent import Torrent, create_torrent

    seeding: list[tuple[Torrent, int]] = []

    def make(manifest: Manifest, root: Path) -> SwarmSource:
        if not seeding:  # one seeder of the suite's files serves every pull
            torrent = create_torrent(manifest, root)
            path = tmp_path / "conformance.torrent"
            torrent.write(path)
            port = free_port()
            seeder(path, root, port)
            seeding.append((torrent, port))
        torrent, port = seeding[0]
        config = SwarmConfig(listen=addr(free_port()), peers=(addr(port),), lsd=False)
        return SwarmSource(manifest, config=config, torrent=torrent)

    report = check_piece_source(make, tmp_path / "suite")
    assert "alone" in report.checks and "beside a mirror" in report.checks


# -- the suite catches broken sources ------------------------------------------------------------
class _OneByteTooMany(MemorySource):
    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        with super().open_range(file, start, min(end + 1, file.size - 1)) as chunks:
            yield chunks


class _StartsOneLate(MemorySource):
    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        with super().open_range(file, min(start + 1, end), end) as chunks:
            yield chunks


class _QuietlyShort(MemorySource):
    """What MemorySource did before: a slice past the end just ends short."""

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        if not self.has_file(file):
            raise SourceNotFound("not here", source=self.name)
        yield iter([self.data[file.path][start : end + 1]])


class _SharedCursor(Source):
    """One file descriptor per file, seek + read: two threads move each other's cursor."""

    def __init__(self, files: Files, folder: Path) -> None:
        self.info = local_source_info("shared-cursor")
        _write(folder, files)
        self._fds = {p: os.open(folder / p, os.O_RDONLY) for p in files}

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        fd = self._fds.get(file.path)
        if fd is None:
            raise SourceNotFound("not here", source=self.name)
        if end >= os.fstat(fd).st_size:
            raise BadResponse("past the end", source=self.name)  # not the point here

        def chunks() -> Iterator[bytes]:
            os.lseek(fd, start, os.SEEK_SET)
            left = end - start + 1
            while left:
                data = os.read(fd, min(left, 4096))
                if not data:
                    return  # another thread moved the cursor to the end
                left -= len(data)
                yield data

        yield chunks()

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}


class _Leaky(MemorySource):
    """Holds a connection until the range is read to its end: abandoned ranges never give it back."""

    def __post_init__(self) -> None:
        self._slots = threading.Semaphore(self.info.max_connections)

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        if not self._slots.acquire(timeout=10):
            raise SourceUnavailable("no free connection", source=self.name)
        with super().open_range(file, start, end) as chunks:

            def counted() -> Iterator[bytes]:
                yield from chunks
                self._slots.release()

            yield counted()


class _Swallows(MemorySource):
    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        with contextlib.suppress(Exception), super().open_range(file, start, end) as chunks:
            yield chunks


class _KeyError(MemorySource):
    def has_file(self, file: FileEntry) -> bool:
        return True  # like an HTTP mirror, it finds out when asked

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        blob = self.data[file.path]  # KeyError for a file it does not hold
        if end >= len(blob):
            raise SourceNotFound("past the end", source=self.name)
        yield iter([blob[start : end + 1]])


class _RetriesForever(MemorySource):
    """Says "unavailable" (retryable) for a file it will never have."""

    def has_file(self, file: FileEntry) -> bool:
        return True

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        if file.path not in self.data:
            raise SourceUnavailable("try again later", source=self.name)
        with super().open_range(file, start, end) as chunks:
            yield chunks


class _Misnamed(MemorySource):
    @property
    def name(self) -> str:
        return "someone-else"


def _mem(cls: type[MemorySource]) -> Callable[[Files], Source]:
    return lambda files: cls(local_source_info("broken"), dict(files))


@pytest.mark.parametrize(
    ("make", "broken"),
    [
        (_mem(_OneByteTooMany), "exact bytes"),
        (_mem(_StartsOneLate), "exact bytes"),
        (_mem(_QuietlyShort), "past the end"),
        (_mem(_Leaky), "early exit"),
        (_mem(_Swallows), "early exit"),
        (_mem(_KeyError), "unknown file"),
        (_mem(_RetriesForever), "unknown file"),
        (_mem(_Misnamed), "identity"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_the_suite_catches_a_broken_source(make: Callable[[Files], Source], broken: str) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        check_source(make)
    failures = caught.value.failures
    assert any(f.startswith(f"{broken}:") for f in failures), failures


def test_the_suite_catches_a_source_that_is_not_thread_safe(tmp_path: Path) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        check_source(lambda files: _SharedCursor(files, tmp_path / "files"), threads=8)
    failures = caught.value.failures
    assert [f.split(":")[0] for f in failures] == ["threads"], failures


class _Lax(HttpSource):
    """Takes a 200 for any range: the whole file's bytes would be passed on as the range's."""

    def _check(
        self, resp: httpx.Response, url: str, redirected: bool, file: FileEntry, start: int, end: int
    ) -> None:
        if resp.status_code != 200:
            super()._check(resp, url, redirected, file, start, end)


def test_the_suite_catches_a_source_that_trusts_a_200_for_a_range(servers: _Servers) -> None:
    def lax(url: str) -> Source:
        return _Lax(SourceInfo("lax", "http", "127.0.0.1"), lambda f: url + quote(f.path), stall_timeout=1.0)

    def faulty(files: Files, fault: ServerFault) -> Source | None:
        if fault is ServerFault.WHOLE_FILE:
            return lax(servers.mirror(files, _MIRROR_FAULTS[fault]).url)
        return None

    with pytest.raises(ConformanceFailure) as caught:
        check_source(lambda files: lax(servers.mirror(files).url), make_faulty=faulty)
    failures = caught.value.failures
    assert [f.split(":")[0] for f in failures] == ["fault"] and "whole-file" in failures[0], failures


def test_a_hanging_source_fails_within_the_timeout() -> None:
    class Hangs(MemorySource):
        @contextlib.contextmanager
        def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
            threading.Event().wait(5)
            yield iter(())

    with pytest.raises(ConformanceFailure, match=r"did not finish within 0\.5 s"):
        check_source(_mem(Hangs), timeout=0.5)


class _MemorySwarm:
    """A piece source that has every piece in memory and keeps the broker's rules.

    The suite's own test: a correct piece source without libtorrent (fast), and the base of the
    broken ones below, each of which breaks one rule.
    """

    def __init__(self, manifest: Manifest, root: Path) -> None:
        self.info = SourceInfo("memory-swarm", "bittorrent", "swarm", region="p2p", max_connections=2)
        self.manifest = manifest
        self.data = {f.path: (root / f.path).read_bytes() for f in manifest.files}
        self.closed = threading.Event()

    @property
    def name(self) -> str:
        return self.info.name

    def piece_bytes(self, piece: Piece) -> bytes:
        return self.data[piece.path][piece.offset : piece.offset + piece.length]

    def running(self, broker: PieceBroker) -> bool:
        return not broker.stopping()

    def run(self, broker: PieceBroker) -> None:
        while self.running(broker):
            got = broker.acquire(self.name)
            if got is None:
                return
            if isinstance(got, float):
                self.closed.wait(min(got, 1.0))
                continue
            self.work(broker, got)

    def work(self, broker: PieceBroker, a: Assignment) -> None:
        error: BaseException | None = None
        try:
            while broker.wanted(a):
                piece = self.manifest.pieces[a.next_piece]
                if not broker.deliver(a, piece, self.piece_bytes(piece), self.name):
                    break
        except PieceMismatch as exc:
            error = exc
        finally:
            broker.release(a, error)

    def piece_available(self, piece: Piece, data: bytes | None) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


def test_a_piece_source_in_memory(tmp_path: Path) -> None:
    report = check_piece_source(_MemorySwarm, tmp_path)
    assert "alone" in report.checks and "resumed" in report.checks


class _IdleSwarm(_MemorySwarm):
    """Takes no work at all: a pull that counts on it cannot finish."""

    def run(self, broker: PieceBroker) -> None:
        pass


class _NeverReleases(_MemorySwarm):
    def work(self, broker: PieceBroker, a: Assignment) -> None:
        while broker.wanted(a):
            piece = self.manifest.pieces[a.next_piece]
            if not broker.deliver(a, piece, self.piece_bytes(piece), self.name):
                break


class _Backwards(_MemorySwarm):
    """Delivers the pieces of a span last first."""

    def work(self, broker: PieceBroker, a: Assignment) -> None:
        try:
            for i in reversed(range(a.next_piece, a.end)):
                piece = self.manifest.pieces[i]
                broker.deliver(a, piece, self.piece_bytes(piece), self.name)
        finally:
            broker.release(a)


class _Corrupt(_MemorySwarm):
    def piece_bytes(self, piece: Piece) -> bytes:
        data = bytearray(super().piece_bytes(piece))
        if piece.index % 3 == 1:
            data[0] ^= 0xFF
        return bytes(data)


class _DeafToStop(_MemorySwarm):
    """Ignores stopping(): only close() ends its loop."""

    def running(self, broker: PieceBroker) -> bool:
        return not self.closed.is_set()

    def run(self, broker: PieceBroker) -> None:
        while self.running(broker):
            got = broker.acquire(self.name)
            if isinstance(got, Assignment):
                self.work(broker, got)
            else:
                self.closed.wait(0.05)


class _Impostor(_MemorySwarm):
    """Reports another source's name to the broker (its own is a mirror's)."""

    def run(self, broker: PieceBroker) -> None:
        name = self.info.name
        self.info = SourceInfo("mirror", "bittorrent", "swarm")
        try:
            super().run(broker)
        finally:
            self.info = SourceInfo(name, "bittorrent", "swarm")


@pytest.mark.parametrize(
    ("swarm", "broken"),
    [
        (_NeverReleases, "never released"),
        (_Backwards, "not its next piece"),
        (_Corrupt, "failed their SHA-256"),
        (_Impostor, "not its name"),
        (_DeafToStop, "had not returned when the pull ended"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_the_suite_catches_a_broken_piece_source(
    tmp_path: Path, swarm: type[_MemorySwarm], broken: str
) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        check_piece_source(swarm, tmp_path, timeout=5)
    assert any(broken in f for f in caught.value.failures), caught.value.failures


def test_the_suite_catches_a_piece_source_that_does_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        check_piece_source(_IdleSwarm, tmp_path, timeout=2)
    names = [f.split(":")[0] for f in caught.value.failures]
    assert names == ["alone", "beside a mirror", "resumed"], caught.value.failures


def test_the_suites_are_public_and_loaded_on_first_use() -> None:
    import dsmirror.testing
    import dsmirror.testing.conformance as conformance

    for name in ("check_source", "check_piece_source", "check_local_reuse", "ServerFault"):
        assert getattr(dsmirror.testing, name) is getattr(conformance, name)
    code = "import sys, dsmirror.testing; print('dsmirror.testing.conformance' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # a test that wants only a MirrorServer does not load the fetch layer
