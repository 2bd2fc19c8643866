"""The status page of a real `dsmirror serve`, loaded in a real headless browser (Debian's Chromium).

A `dsmirror serve --seed` process holds a verified ``--folder`` (which it seeds), an Ollama store, a
folder with a tampered file (an error on the page), an empty folder it fills from a slow LAN file
server, and an empty HF cache it fills by pull-through from a loopback upstream. The real
``huggingface_hub`` client downloads the repo through it twice (one upstream fetch, two downloads:
a saving), ``httpx`` fetches a folder file, a BitTorrent peer (``dsmirror pull`` of the magnet,
from peers alone) takes the seeded folder, and a slow pull is started. Then Chromium, driven over
WebDriver (``chromedriver``'s HTTP API, no client library), loads ``/``; the test waits until the
page's live data has arrived, checks what it shows against the server's own counters and saves a
screenshot: ``<tmp_path>/status.png``, copied to ``bench-out/status.png`` (the path is printed).

Skipped only where chromium or chromedriver is missing and ``CI`` is not set: ``.ci/run`` installs
both, and there the test must run.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsmirror import create_manifest
from dsmirror._core.units import format_bytes
from dsmirror._serve import STATS, HfRepo, ModelIndex, ServerThread, make_app
from dsmirror.testing import MirrorServer
from test_serve_cli import DSMIRROR, ServeProcess, clean_env, hf_snapshot, make_repo_folder, tree_bytes
from test_serve_status import _ollama_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REPO_ID = "acme/office-model"
ARTIFACT = Path(__file__).parents[1] / "bench-out" / "status.png"
#: What headless Chromium needs on these machines (no sandbox as root, no calls home).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1500",
    "--lang=en-US",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        (CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
        reason="chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
        ".ci/run installs them)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebDriver:
    """Just enough of the W3C WebDriver protocol, spoken to chromedriver over loopback HTTP."""

    def __init__(self, user_data_dir: Path) -> None:
        assert CHROMIUM is not None and CHROMEDRIVER is not None, "chromium and chromedriver are needed"
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60, trust_env=False)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("chromedriver did not start")
            time.sleep(0.1)
        options = {"binary": CHROMIUM, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"]}
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.request(method, path, json=body)
        value = r.json()["value"]
        assert r.status_code == 200, value
        return value

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self._call(
            "POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)}
        )

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def console(self) -> list[dict[str, Any]]:
        """The browser's console messages so far (chromedriver's log endpoint)."""
        logs: list[dict[str, Any]] = self._call(
            "POST", f"/session/{self.session}/se/log", {"type": "browser"}
        )
        return logs

    def close(self) -> None:
        try:
            self.http.delete(f"/session/{self.session}")
        finally:
            self.http.close()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = WebDriver(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.close()


# What the page shows, read from its DOM in one go.
_READ_PAGE = """
const q = (sel) => Array.from(document.querySelectorAll(sel));
return {
  updated: document.body.dataset.updated || null,
  live: document.getElementById('live').textContent,
  served: Number(document.getElementById('served-bytes').dataset.bytes),
  servedText: document.getElementById('served-bytes').textContent,
  upstream: Number(document.getElementById('upstream-bytes').dataset.bytes),
  saved: Number(document.getElementById('saved-bytes').dataset.bytes),
  models: q('tr.model').map((tr) => ({
    name: tr.dataset.name, format: tr.dataset.format, size: Number(tr.dataset.size),
    cells: Array.from(tr.cells).map((td) => td.textContent),
  })),
  pulls: q('tr.pull').map((tr) => ({state: tr.dataset.state, text: tr.textContent})),
  errors: q('#errors li').map((li) => ({
    message: li.querySelector('.message').textContent, hint: li.querySelector('.hint').textContent,
    html: li.innerHTML,
  })),
  chart: q('#chart polyline').map((p) => p.getAttribute('points').split(' ').length),
  seeding: document.getElementById('seeding-summary').textContent,
};
"""


def _wait_status(srv: ServeProcess, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        doc: dict[str, Any] = httpx.get(f"{srv.url}/dsmirror/status", timeout=30).json()
        if ready(doc):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


def _peer_pull(srv: ServeProcess, tmp_path: Path) -> int:
    """Pull the seeded folder from the server's BitTorrent port alone; the bytes it uploaded."""
    deadline = time.monotonic() + 20
    while not (magnets := [line.split()[-1] for line in srv.stderr if "magnet:?" in line]):
        assert time.monotonic() < deadline, "".join(srv.stderr)
        time.sleep(0.1)
    port = _wait_status(srv, lambda d: d["seeding"] is not None)["seeding"]["port"]
    options = [
        "--peer",
        f"127.0.0.1:{port}",
        "--dest",
        str(tmp_path / "peer"),
        "--no-default-catalog",
        "--no-lsd",
    ]
    proc = subprocess.run(
        [*DSMIRROR, "pull", magnets[0], *options],
        env=clean_env(tmp_path / "peer-home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = _wait_status(srv, lambda d: d["seeding"]["uploaded"] >= 700_000)
    return int(doc["seeding"]["uploaded"])


def _quietly_get(url: str) -> None:
    """A client of the slow pull; cut off when the server stops."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=120)


def test_status_page_in_chromium(browser: WebDriver, tmp_path: Path) -> None:
    t0 = time.monotonic()
    origin_folder = make_repo_folder(tmp_path / "origin", seed=21)
    repo = HfRepo.from_folder(REPO_ID, origin_folder)
    plain = tmp_path / "plain"
    (plain / "weights").mkdir(parents=True)
    (plain / "weights" / "a.bin").write_bytes(hashlib.shake_128(b"plain").digest(700_000))
    manifest = create_manifest(plain, name="plain-model", piece_size=64 << 10)
    manifest.write(tmp_path / "plain.json")
    broken = tmp_path / "broken"
    shutil.copytree(plain, broken)
    broken_manifest = create_manifest(broken, name="<b>broken</b>-model", piece_size=64 << 10)
    broken_manifest.write(tmp_path / "broken.json")
    (broken / "weights" / "a.bin").write_bytes(hashlib.shake_128(b"tampered").digest(700_000))
    _ollama_store(tmp_path / "ollama")
    # A model the box lacks, on a slow LAN file server: its pull is running while the page is seen.
    slow_origin = tmp_path / "slow-origin"
    (slow_origin / "w").mkdir(parents=True)
    (slow_origin / "w" / "big.bin").write_bytes(hashlib.shake_128(b"slow").digest(20_000_000))
    create_manifest(slow_origin, name="slow-model", piece_size=256 << 10).write(tmp_path / "slow.json")
    (tmp_path / "slow").mkdir()

    upstream_app = make_app(ModelIndex([repo]))
    with ServerThread(upstream_app) as up, MirrorServer(slow_origin, rate=400_000) as lan:
        catalog = tmp_path / "mirrors.yaml"
        catalog.write_text(
            "version: 1\nmirrors:\n"
            f"  - name: office-upstream\n    kind: hf\n    url: {up.url}\n"
            f"  - name: lan-files\n    kind: http\n    url: {lan.url}\n"
        )
        args = ["--upstream", "--mirrors", str(catalog), "--no-default-catalog", "--rescan", "0"]
        args += ["--hf-cache", str(tmp_path / "hub"), "--ollama-models", str(tmp_path / "ollama")]
        for name, folder in (("plain", plain), ("broken", broken), ("slow", tmp_path / "slow")):
            args += ["--folder", f"{tmp_path / name}.json:{folder}"]
        args += ["--seed", "--listen", "127.0.0.1:0"]
        with ServeProcess(args, tmp_path / "serve-home") as srv:
            deadline = time.monotonic() + 10  # the start-up lines after the URL name the page
            while not any(f"status page:  {srv.url}/ " in line for line in srv.stderr):
                assert time.monotonic() < deadline, srv.stderr
                time.sleep(0.05)
            # Two real Hugging Face clients through the pull-through, a plain download.
            for client in ("alice", "bob"):
                snap = hf_snapshot(tmp_path / client, srv.url, REPO_ID)
                assert tree_bytes(snap) == tree_bytes(origin_folder)
            got = httpx.get(f"{srv.url}/dsmirror/files/plain-model/weights/a.bin", timeout=30)
            assert got.content == (plain / "weights" / "a.bin").read_bytes()
            # A BitTorrent peer (dsmirror itself, from peers alone) takes the seeded folder.
            uploaded = _peer_pull(srv, tmp_path)
            # The slow pull starts; the page is loaded while it runs.
            pool = concurrent.futures.ThreadPoolExecutor(1)
            pool.submit(_quietly_get, f"{srv.url}/dsmirror/files/slow-model/w/big.bin")
            status = _wait_status(srv, lambda d: any(p["rate"] > 0 for p in d["pulls"]["recent"]))
            served, upstream = status["served"]["bytes"], status["upstream"]["bytes"]
            hf_bytes = sum(upstream_app[STATS].bytes_by_file.values())
            assert status["upstream"]["by_source"]["office-upstream"] == hf_bytes > 0
            assert served == 2 * hf_bytes + 700_000, (served, hf_bytes)
            assert status["seeding"]["uploaded"] == uploaded >= 700_000
            print(f"set-up (server, two hf clients, a download, a peer): {time.monotonic() - t0:.1f} s")

            t1 = time.monotonic()
            browser.get(srv.url + "/")
            deadline = time.monotonic() + 30
            while True:
                page = browser.js(_READ_PAGE)
                names = {m["name"] for m in page["models"]}
                if page["updated"] and page["served"] == served and REPO_ID in names:
                    break
                assert time.monotonic() < deadline, f"the page never showed the live data: {page}"
                time.sleep(0.2)
            print(f"page live in Chromium after {time.monotonic() - t1:.1f} s")
            time.sleep(0.5)  # let the last paint settle for the screenshot
            browser.screenshot(tmp_path / "status.png")
            console = browser.console()
            after = httpx.get(f"{srv.url}/dsmirror/status", timeout=30).json()
            metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
            pool.shutdown(wait=False, cancel_futures=True)

    # What it shows is what the server counted (the slow pull goes on: upstream grows meanwhile).
    assert page["served"] == served
    assert upstream <= page["upstream"] <= after["upstream"]["bytes"]
    assert page["saved"] == served - page["upstream"]
    assert page["servedText"] == format_bytes(served)
    assert page["live"].startswith("live")
    by_name = {m["name"]: m for m in page["models"]}
    held = {m["name"]: m for m in status["models"]}
    assert (
        set(by_name)
        == set(held)
        == {
            REPO_ID,
            "library/tiny:latest",
            "plain-model",
            "<b>broken</b>-model",
            "slow-model",
        }
    )
    for name, m in by_name.items():
        assert m["size"] == held[name]["size"] and m["format"] == held[name]["format"], name
        assert m["cells"][0] == name  # as text: the hostile manifest name made no element
        assert m["cells"][3] == format_bytes(held[name]["size"])
    assert by_name[REPO_ID]["cells"][5] == "verified"  # pulled by dsmirror: checked
    assert by_name["plain-model"]["cells"][5] == "verified"
    assert by_name["<b>broken</b>-model"]["cells"][4].endswith("(incomplete)")
    assert by_name["<b>broken</b>-model"]["cells"][5] == "incomplete"
    assert by_name["plain-model"]["size"] == 700_000
    assert {p["state"] for p in page["pulls"]} == {"done", "running"}
    assert any("office-upstream" in p["text"] for p in page["pulls"])
    (running,) = [p for p in page["pulls"] if p["state"] == "running"]
    assert "slow-model/w/big.bin" in running["text"] and re.search(
        r"lan-files: [\d.]+ KiB/s", running["text"]
    )
    assert any("not serving" in e["message"] and "a.bin" in e["message"] for e in page["errors"])
    assert all(e["hint"] and "<b>" not in e["html"] for e in page["errors"])
    assert page["chart"] == [page["chart"][0]] * 2 and page["chart"][0] >= 2
    assert page["seeding"].startswith("Seeding 1 torrent(s) on port ")
    assert f"{format_bytes(uploaded)} uploaded" in page["seeding"]
    assert f"dsmirror_bittorrent_uploaded_bytes_total {uploaded}\n" in metrics
    assert not [m for m in console if m.get("level") == "SEVERE"], console  # no CSP or script error

    png = (tmp_path / "status.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "status.png", ARTIFACT)
    print(f"screenshot: {tmp_path / 'status.png'} (copied to {ARTIFACT})")
