"""Registry pulls shared on the namespaced LAN (issue 13, item 3): ``hf://`` with no piece hashes.

A Hugging Face endpoint (``dsmirror._serve``'s HF routes over a folder) runs in the "internet"
namespace behind the shaped uplink; three hosts pull the same ``hf://`` model at once with
``--prefer p2p`` and nothing else. The registry publishes whole-file SHA-256s only, so the hosts
meet in the manifest's own swarm with placeholder piece hashes (``derived_torrent``), take what
the others fetched from the LAN unchecked piece by piece, and the whole-file digest decides. A
host that sends bad bytes is caught when the file fails: the repair fetches its pieces again from
the endpoint and its address is banned. Root only (CI); slow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _lan_hosts import Host, wait_and_stop
from dsmirror.testing.netns import PYTHON_CLI, NetnsLan, Upstream, leftovers, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

MiB = 1 << 20
REPO = "acme/lan-model"
UPLINK = "96mbit"  # 12 MB/s from the endpoint to the office, all hosts together (issue 13's)
RATE = 12_000_000

_SERVE = """
import json, os, signal, sys, time
from pathlib import Path
from typing import Any
from dsmirror._serve import STATS, HfRepo, ModelIndex, ServerThread, make_app
repo_id, folder, host, port, stats = sys.argv[1:6]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
srv = ServerThread(make_app(ModelIndex([HfRepo.from_folder(repo_id, Path(folder))])), host, int(port)).start()
tmp = Path(stats + ".tmp")
while not stop:
    tmp.write_text(json.dumps({"bytes_served": srv.app[STATS].bytes_total, "by_path": {}}))
    os.replace(tmp, stats)
    time.sleep(0.1)
srv.stop()
"""


_SERVE_OLLAMA = """
import json, os, signal, sys, time
from pathlib import Path
from dsmirror._serve import STATS, ModelIndex, OllamaModel, ServerThread, make_app
folder, host, port, stats = sys.argv[1:5]
root = Path(folder)
layers = [("application/vnd.ollama.image.model", root / "model.gguf"),
          ("application/vnd.ollama.image.params", root / "params")]
model = OllamaModel.from_files("library", "tiny", "latest", layers, b'{"model_format":"gguf"}')
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
srv = ServerThread(make_app(ModelIndex(ollama_models=[model])), host, int(port)).start()
tmp = Path(stats + ".tmp")
while not stop:
    tmp.write_text(json.dumps({"bytes_served": srv.app[STATS].bytes_total, "by_path": {}}))
    os.replace(tmp, stats)
    time.sleep(0.1)
srv.stop()
"""


def _write(path: Path, size: int, seed: bytes) -> None:
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    with open(path, "wb") as f:
        left = size
        while left:
            f.write(block[: min(left, len(block))])
            left -= min(left, len(block))
            block = hashlib.sha256(block[:64]).digest() * (MiB // 32)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """An HF repo folder: two LFS files of 8 MiB pieces (no piece hashes published) and a small
    git file; (folder, bytes of the LFS files)."""
    root = tmp_path_factory.mktemp("hf-lan") / "repo"
    root.mkdir()
    _write(root / "model.safetensors", 80 * MiB + 7, b"big")
    _write(root / "extra.safetensors", 16 * MiB + 3, b"extra")
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    return root, 96 * MiB + 10


@pytest.fixture
def lan3() -> Iterator[NetnsLan]:
    lan = NetnsLan(3, uplink=UPLINK)
    try:
        lan.build()
        yield lan
    finally:
        lan.close()
        assert leftovers(lan.tag) == []


def _endpoint(lan: NetnsLan, folder: Path, stats: Path) -> Upstream:
    stats.unlink(missing_ok=True)
    argv = [sys.executable, "-c", _SERVE, REPO, str(folder), lan.upstream_address, "8080", str(stats)]
    p = lan.popen(lan.internet, argv)
    deadline = time.monotonic() + 30
    while not stats.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the HF endpoint did not start")
        time.sleep(0.05)
    return Upstream(p, f"http://{lan.upstream_address}:8080", stats)


ALIAS = "lan-model:8b"
#: The alias says the model is published for sharing (its magnet: the derived torrent is used).
MAGNET = "magnet:?xt=urn:btih:" + "ab" * 20


def _catalog(path: Path, url: str) -> Path:
    path.write_text(
        f'version: 1\nmirrors:\n  - name: hub\n    kind: hf\n    url: "{url}"\n'
        f'models:\n  "{ALIAS}":\n    hf: {REPO}\n    magnet: "{MAGNET}"\n'
    )
    return path


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Host copies os.environ: nothing goes to the real Hub, nothing is reported anywhere.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _pull(cat: Path, dest: Path, *extra: str, ref: str = f"hf://{REPO}") -> list[str]:
    return [*PYTHON_CLI, "pull", ref, "--mirrors", str(cat), "--no-default-catalog",
            "--no-reuse", "--dest", str(dest), "--json", "--give-up-after", "60", *extra]  # fmt: skip


def _same(folder: Path, dest: Path) -> bool:
    return all(
        (dest / p.name).is_file() and (dest / p.name).read_bytes() == p.read_bytes()
        for p in folder.iterdir()
        if p.is_file()
    )


@pytest.mark.parametrize(
    ("ref", "prefer", "then"),
    [(f"hf://{REPO}", "p2p", "leave"), (f"hf://{REPO}", "p2p", "seed"), (ALIAS, "auto", "seed")],
)
def test_three_hosts_share_an_hf_pull(
    lan3: NetnsLan, model: tuple[Path, int], tmp_path: Path, ref: str, prefer: str, then: str
) -> None:
    """``then``: what a host does once its pull is done: ``leave`` (it exits; the pieces it
    fetched last that nobody copied yet are fetched again) or ``seed`` (``pull --seed``: it goes
    on serving the others with no gap, see "The hand-over" in ``dsmirror._share.seed``)."""
    folder, size = model
    up = _endpoint(lan3, folder, tmp_path / "stats.json")
    cat = _catalog(tmp_path / "cat.yaml", up.url)
    extra = ["--seed"] if then == "seed" else []
    argv = [_pull(cat, tmp_path / f"d{k}", "--prefer", prefer, *extra, ref=ref) for k in range(3)]
    hosts = [Host(lan3, k, tmp_path, f"h{k}", argv[k]) for k in range(3)]
    started: dict[str, float] = {}

    def note_start(h: Host) -> None:
        with contextlib.suppress(TimeoutError):
            h.wait_for(lambda e: e.get("event") == "PullStarted", 60)
            started[h.name] = time.monotonic() - h.started

    watchers = [threading.Thread(target=note_start, args=(h,), daemon=True) for h in hosts]
    for w in watchers:
        w.start()
    served = wait_and_stop(hosts, 90, up)
    assert all(h.finished is not None for h in hosts), [h.stderr_tail() for h in hosts if h.finished is None]
    by = [h.result.get("delivered_by_source", {}) if h.result else {} for h in hosts]
    extra = [(h.result or {}).get("redundant_bytes") for h in hosts]
    trouble = [len(h.of("PieceRejected")) + len(h.of("SourceTrouble")) for h in hosts]
    print(
        f"{ref} --prefer {prefer}, then {then}, on 3 hosts: upstream {served / size:.3f}x the model "
        f"({served} B; floor 1.2x, goal 1.05x); "
        f"one copy {size / RATE:.1f} s; hosts {[round(h.seconds, 1) for h in hosts]} s; delivered {by}; "
        f"redundant {extra}; rejected/trouble events {trouble}; resolved after "
        f"{ {k: round(v, 1) for k, v in sorted(started.items())} } s"
    )
    for k in range(3):
        assert _same(folder, tmp_path / f"d{k}"), f"host {k} holds other bytes"
    assert all(b.get("swarm", 0) > 0 for b in by), by  # every host took pieces from the LAN
    # Each host alone would take 3x: sharing must save at least a copy, always.
    assert served <= 2.0 * size, f"upstream served {served / size:.3f}x the model: they did not share"
    # The floor, 1.2x (goal 1.05x). Measured (96 MiB, 8 MiB pieces, 12 MB/s, load 3-7):
    # 1.022-1.027x in about 2 runs of 3, else 1.19-1.52x: 1 to 3 pieces of 8 MiB fetched twice, the
    # hosts that did not finish first taking 19-20 s instead of 12-13 (likely: an owner's slow streams
    # look quiet to the others: lan_stall / swarm_slow in _schedule; not seen with test_lan's 1
    # MiB pieces). Until the scheduler copes with large pieces a miss is an xfail, not a pass.
    if served > 1.2 * size:
        pytest.xfail(f"upstream {served / size:.3f}x the model, over the 1.2x floor (see the comment)")


def test_a_host_that_sends_bad_bytes_is_banned_and_nothing_wrong_is_delivered(
    lan3: NetnsLan, model: tuple[Path, int], tmp_path: Path
) -> None:
    """Host 2 pulled the model, then a byte of its copy rotted on disk, and it seeds it (libtorrent
    checks nothing of the manifest's own swarm): hosts 0 and 1 take pieces from it, the file fails
    its SHA-256, the repair fetches the swarm's pieces again, finds the one that differed, and the
    host that sent it is banned by address. Both end with the registry's bytes."""
    folder, size = model
    up = _endpoint(lan3, folder, tmp_path / "stats.json")
    cat = _catalog(tmp_path / "cat.yaml", up.url)
    first = Host(lan3, 2, tmp_path, "liar-pull", _pull(cat, tmp_path / "d2", "--prefer", "p2p"))
    wait_and_stop([first], 60)
    assert first.finished is not None, first.stderr_tail()
    rotted = tmp_path / "d2" / "model.safetensors"
    with open(rotted, "r+b") as f:  # the middle of piece 2: only a whole-file digest can tell
        f.seek(2 * 8 * MiB + 12345)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = up.bytes_served
    liar = Host(lan3, 2, tmp_path, "liar-seed", [*PYTHON_CLI, "seed", str(tmp_path / "d2"), "--json"])

    def seeding(e: dict[str, Any]) -> bool:
        return e.get("event") == "SeedStatus" and any(t.get("state") == "seeding" for t in e["torrents"])

    liar.wait_for(seeding, 30)  # so that the others take the model from it
    hosts = [
        Host(lan3, k, tmp_path, f"h{k}", _pull(cat, tmp_path / f"d{k}", "--prefer", "p2p")) for k in (0, 1)
    ]
    served = wait_and_stop(hosts, 90, up, also=[liar]) - before
    for h in [*hosts, liar]:  # kept for a failure's post-mortem
        (tmp_path / f"events-{h.name}.json").write_text(json.dumps(h.events))
    assert all(h.finished is not None for h in hosts), [h.stderr_path.read_text()[-800:] for h in hosts]
    by = [h.result.get("delivered_by_source", {}) if h.result else {} for h in hosts]
    liar_addr = lan3.addresses[2]
    bans = [
        [e for e in h.of("SourceTrouble") if f"banned peer {liar_addr}" in str(e.get("message", ""))]
        for h in hosts
    ]
    print(
        f"liar on the LAN: upstream {served / size:.3f}x the model for 2 hosts; delivered {by}; "
        f"bans {[len(b) for b in bans]}; rejected {[len(h.of('PieceRejected')) for h in hosts]}"
    )
    for k in (0, 1):
        assert _same(folder, tmp_path / f"d{k}"), f"host {k} holds other bytes"
    # Both took the model from the liar (it seeded before they started), so its rotten piece
    # failed their file; a host may have had that piece from the other (who relayed it, and is
    # then the one it bans), but the liar is banned by someone, by address.
    assert all(b.get("swarm", 0) > 0 for b in by), by
    assert all(any("failed its SHA-256" in str(e["reason"]) for e in h.of("PieceRejected")) for h in hosts)
    assert any(bans), [h.of("SourceTrouble") for h in hosts]


def test_three_hosts_share_an_ollama_pull(lan3: NetnsLan, tmp_path: Path) -> None:
    """The same for ``ollama://``: blobs named by their SHA-256 only."""
    folder = tmp_path / "ollama-src"
    folder.mkdir()
    _write(folder / "model.gguf", 64 * MiB + 5, b"gguf")
    (folder / "params").write_text('{"stop":["</s>"]}')
    size = 64 * MiB + 5
    stats = tmp_path / "stats.json"
    argv = [sys.executable, "-c", _SERVE_OLLAMA, str(folder), lan3.upstream_address, "8080", str(stats)]
    p = lan3.popen(lan3.internet, argv)
    deadline = time.monotonic() + 30
    while not stats.exists():
        assert p.poll() is None and time.monotonic() < deadline, "the Ollama registry did not start"
        time.sleep(0.05)
    up = Upstream(p, f"http://{lan3.upstream_address}:8080", stats)
    cat = tmp_path / "cat.yaml"
    mirror = f'  - name: registry\n    kind: ollama\n    url: "{up.url}"\n    official: true\n'
    cat.write_text(f"version: 1\nmirrors:\n{mirror}")
    ref = "ollama://library/tiny:latest"
    hosts = [
        Host(lan3, k, tmp_path, f"o{k}", _pull(cat, tmp_path / f"o{k}", "--prefer", "p2p", ref=ref))
        for k in range(3)
    ]
    served = wait_and_stop(hosts, 90, up)
    assert all(h.finished is not None for h in hosts), [h.stderr_path.read_text()[-800:] for h in hosts]
    by = [h.result.get("delivered_by_source", {}) if h.result else {} for h in hosts]
    print(
        f"{ref} --prefer p2p on 3 hosts: upstream {served / size:.3f}x the model ({served} B); "
        f"hosts {[round(h.seconds, 1) for h in hosts]} s; delivered {by}"
    )
    want = hashlib.sha256((folder / "model.gguf").read_bytes()).hexdigest()
    for k in range(3):
        dest = tmp_path / f"o{k}"
        files = [f for f in dest.rglob("*") if f.is_file() and ".dsmirror" not in f.relative_to(dest).parts]
        got = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        assert want in got, f"host {k} lacks the model blob"
    assert all(b.get("swarm", 0) > 0 for b in by), by
    assert served <= 2.0 * size, f"upstream served {served / size:.3f}x the model: they did not share"
    if served > 1.2 * size:
        pytest.xfail(f"upstream {served / size:.3f}x the model, over the 1.2x floor (see the hf test)")
