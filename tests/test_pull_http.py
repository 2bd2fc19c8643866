"""Verified multi-source pulls from real HTTP mirrors on loopback, good and misbehaving.

Every test starts its own MirrorServers on 127.0.0.x and pulls a generated model through the
library API (``dsmirror.pull`` with a catalog that lists only those mirrors) or through the CLI
in a subprocess. Nothing here measures speed: a slow machine makes the tests slower, not red.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror import (
    IntegrityError,
    ManifestMismatch,
    NoSourceError,
    PieceRejected,
    PullFinished,
    PullStarted,
    SourceDropped,
    SourceTrouble,
)
from dsmirror.testing import Faults, MirrorServer

KiB = 1 << 10
MiB = 1 << 20
PS = 64 * KiB

pytestmark = pytest.mark.timeout(120)

# On, under and over a piece boundary, empty, one byte, a larger file (about 2.7 MB), an odd name.
SIZES = {
    "exact.bin": PS,
    "over.bin": PS + 1,
    "under.bin": PS - 1,
    "empty.bin": 0,
    "one.bin": 1,
    "sub/two-exact.bin": 2 * PS,
    "sub/deeper/big.bin": 37 * PS + PS // 3,
    "odd name +%ü#?.bin": 1000,  # must be quoted in the URL
}


@pytest.fixture
def model(make_model: Callable[..., Any]) -> Any:
    return make_model(SIZES, piece_size=PS, name="pull-test", seed=7)


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def finished(events: list[Any]) -> PullFinished:
    done = of(events, PullFinished)
    assert len(done) == 1, events[-5:]
    return done[0]


# -- the happy path -------------------------------------------------------------------------------
def test_three_mirrors_byte_identical(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
    run_cli: Callable[..., Any],
) -> None:
    # Throttled, so that all three take part instead of the first one finishing alone.
    mirrors = start_mirrors(model.root, 3, rate=2 * MiB)
    catalog = catalog_file(mirrors)
    dest = tmp_path / "dest"
    events = lib_pull(model, catalog, dest)

    model.assert_identical(dest)
    r = run_cli("verify", model.manifest_path, dest)
    assert r.returncode == 0, r.stdout + r.stderr

    done = finished(events)
    assert done.total_bytes == model.total_size
    assert sum(done.delivered_by_source.values()) == model.total_size
    assert done.corrupt_bytes == 0
    assert all(m.bytes_served > 0 for m in mirrors), [m.bytes_served for m in mirrors]
    started = of(events, PullStarted)[0]
    assert started.verified_bytes == 0 and set(started.sources) == {"m1", "m2", "m3"}
    # Progress is monotonic and ends complete.
    progress = [e.verified_bytes for e in events if isinstance(e, dsmirror.Progress)]
    assert progress == sorted(progress) and progress[-1] == model.total_size
    # Nothing half-done is left behind, and nothing else appeared in dest.
    assert not (dest / ".dsmirror" / "partial" / model.manifest.sha256).exists()
    listed = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert {p for p in listed if not p.startswith(".dsmirror/")} == set(SIZES)

    # A second pull of a finished model downloads nothing.
    served = [m.bytes_served for m in mirrors]
    again = lib_pull(model, catalog, dest)
    assert [m.bytes_served for m in mirrors] == served
    assert of(again, PullStarted)[0].verified_bytes == model.total_size
    assert finished(again).downloaded_bytes == 0


def test_slow_mirrors_last_pieces_are_split_with_the_fast_one(
    make_model: Callable[..., Any],
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    # The slow mirror's connections each hold a piece (1 MiB at 64 KiB/s each) when the fast one
    # runs out of free work: the fast one fetches the back part of those pieces, the slow one
    # stops at the cut, and each piece is verified from the two halves.
    model = make_model({"big.bin": 24 * MiB + 123, "small.bin": 3000}, piece_size=MiB, seed=3)
    slow, fast = start_mirrors(model.root, [{"rate": 512 * KiB}, {"rate": 16 * MiB}])
    dest = tmp_path / "dest"
    events = lib_pull(model, catalog_file({"slow": slow, "fast": fast}), dest)
    model.assert_identical(dest)
    done = finished(events)
    assert done.split_pieces >= 1, done
    assert done.corrupt_bytes == 0 and not of(events, PieceRejected)
    assert sum(done.delivered_by_source.values()) == model.total_size
    assert 0 < done.delivered_by_source["slow"] < 4 * MiB, done.delivered_by_source


def test_crawling_connection_is_replaced(
    make_model: Callable[..., Any],
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    # The mirror's first GET crawls at 20 KB/s (a stuck flow) while its other connections share
    # 4 MiB/s: the crawling connection is dropped and a new one fetches its pieces.
    model = make_model({"big.bin": 24 * MiB}, piece_size=MiB, seed=4)
    (mirror,) = start_mirrors(model.root, [{"rate": 4 * MiB, "faults": Faults(crawl=20_000, count=1)}])
    dest = tmp_path / "dest"
    events = lib_pull(model, catalog_file([mirror]), dest)
    model.assert_identical(dest)
    done = finished(events)
    assert done.replaced_connections >= 1, done
    assert not of(events, SourceTrouble)  # replacing a connection is not a failure of the mirror


def test_connection_broken_inside_a_piece_resumes_where_it_stopped(
    make_model: Callable[..., Any],
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    # 4 MiB pieces; the first response (one piece: the mirror is not measured yet) stops after
    # half its body. The next connection asks for the piece from 2 MiB on (the front is on disk
    # and in the hash state) instead of from 0.
    model = make_model({"big.bin": 8 * MiB}, piece_size=4 * MiB, seed=5)
    (mirror,) = start_mirrors(model.root, [{"faults": Faults(short_body=True, count=1)}])
    dest = tmp_path / "dest"
    events = lib_pull(model, catalog_file([mirror]), dest)
    model.assert_identical(dest)
    assert of(events, SourceTrouble)  # the response did break
    # Without resuming inside the piece, 2 MiB would be fetched twice.
    assert mirror.bytes_served < model.total_size + MiB, mirror.bytes_served


def test_cli_pull_json(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    run_cli: Callable[..., Any],
) -> None:
    mirrors = start_mirrors(model.root, 2)
    dest = tmp_path / "dest"
    r = run_cli(
        "pull", model.manifest_path, "--mirrors", catalog_file(mirrors), "--no-default-catalog",
        "--dest", dest, "--json", "--manifest-sha256", model.manifest.sha256,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "PullStarted"
    assert events[0]["manifest_sha256"] == model.manifest.sha256
    assert events[-1]["event"] == "PullFinished"
    assert sorted(events[-1]["files"]) == sorted(SIZES)
    model.assert_identical(dest)


def test_pin_mismatch_fetches_nothing(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    (mirror,) = start_mirrors(model.root, 1)
    with pytest.raises(ManifestMismatch):
        lib_pull(model, catalog_file([mirror]), tmp_path / "dest", manifest_sha256="ab" * 32)
    assert mirror.requests == 0
    assert not (tmp_path / "dest").exists()


def test_a_mirror_missing_a_file_is_not_asked_again(
    make_model: Callable[..., Any],
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    # Without the one-byte file: a one-byte probe piece can make the full mirror look slow and
    # stall this pull (see test_scheduler.py::test_only_source_that_has_the_file_is_never_refused).
    model = make_model({k: v for k, v in SIZES.items() if v != 1}, piece_size=PS, seed=7)
    partial = tmp_path / "partial-mirror"
    shutil.copytree(model.root, partial)
    (partial / "sub" / "deeper" / "big.bin").unlink()
    (full,) = start_mirrors(model.root, [{"rate": 4 * MiB}])
    (lacking,) = start_mirrors(partial, 1)
    dest = tmp_path / "dest"
    lib_pull(model, catalog_file({"full": full, "lacking": lacking}), dest)
    model.assert_identical(dest)
    assert "sub/deeper/big.bin" not in lacking.bytes_served_by_path
    assert full.bytes_served_by_path.get("sub/deeper/big.bin", 0) >= model.sizes["sub/deeper/big.bin"]


# -- faulty mirrors next to good ones -------------------------------------------------------------
FAULTS: dict[str, Faults] = {
    "corrupt": Faults(corrupt=True),
    "reset": Faults(reset_after=10_000),
    "stall": Faults(stall_after=10_000, stall_seconds=30),
    "html-instead": Faults(html_instead=True),
    "200-for-range": Faults(ignore_range=True),
    "wrong-content-range": Faults(wrong_content_range=True),
    "short-body": Faults(short_body=True),
    "503": Faults(status=503),
    "503-retry-after": Faults(status=503, retry_after=1),
    "429": Faults(status=429),
    "429-retry-after": Faults(status=429, retry_after=2),
    "500": Faults(status=500),
    "some-of-everything": Faults(corrupt=True, reset_after=30_000, probability=0.5, seed=3),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_faulty_mirror_never_corrupts_the_result(
    kind: str,
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    faults = FAULTS[kind]
    # Good mirrors are throttled so the (unthrottled) faulty one is surely asked for pieces.
    good1, good2, bad = start_mirrors(model.root, [{"rate": 3 * MiB}, {"rate": 3 * MiB}, {"faults": faults}])
    dest = tmp_path / "dest"
    events = lib_pull(
        model, catalog_file({"good1": good1, "good2": good2, "bad": bad}), dest, stall_timeout=1.0
    )

    model.assert_identical(dest)
    assert bad.faults_applied > 0, "the faulty mirror was never asked"
    done = finished(events)
    assert sum(done.delivered_by_source.values()) == model.total_size
    if faults.corrupt and faults.probability == 1.0:
        rejected = {e.source for e in of(events, PieceRejected)}
        # Pieces from the bad mirror alone, or copies it made together with another (a split or
        # resumed piece; those blame nobody): never a good mirror alone.
        assert "bad" in rejected and all("bad" in r.split("+") for r in rejected), rejected
        assert [e.source for e in of(events, SourceDropped)] == ["bad"]
        assert done.corrupt_bytes > 0
    elif not faults.corrupt:
        troubles = [e for e in of(events, SourceTrouble) if e.source == "bad"]
        assert troubles, "the faulty mirror's errors were not reported"
        assert not of(events, PieceRejected)
    if faults.retry_after is not None:
        # Retry-After is honoured exactly, without jitter.
        waits = [e.retry_in for e in of(events, SourceTrouble) if e.source == "bad"]
        assert any(faults.retry_after - 0.3 <= w <= faults.retry_after for w in waits), waits


def test_corrupting_mirror_is_dropped_in_json_output(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    run_cli: Callable[..., Any],
) -> None:
    good1, good2, liar = start_mirrors(
        model.root, [{"rate": 3 * MiB}, {"rate": 3 * MiB}, {"faults": Faults(corrupt=True)}]
    )
    dest = tmp_path / "dest"
    catalog = catalog_file({"good1": good1, "good2": good2, "liar": liar})
    r = run_cli(
        "pull", model.manifest_path, "--mirrors", catalog, "--no-default-catalog", "--dest", dest, "--json"
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    dropped = [e for e in events if e["event"] == "SourceDropped"]
    assert [e["source"] for e in dropped] == ["liar"]
    assert "SHA-256" in dropped[0]["reason"]
    rejected = [e for e in events if e["event"] == "PieceRejected"]
    assert len(rejected) >= 2 and {e["source"] for e in rejected} == {"liar"}
    final = events[-1]
    assert final["event"] == "PullFinished"
    assert final["corrupt_bytes"] > 0
    good = final["delivered_by_source"]["good1"] + final["delivered_by_source"]["good2"]
    assert good + final["delivered_by_source"]["liar"] == model.total_size
    model.assert_identical(dest)
    r = run_cli("verify", model.manifest_path, dest)
    assert r.returncode == 0


def test_mirror_down_at_start_is_used_once_back(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    # The slow mirror alone would need ~3 s; the other one is down for the first moment only.
    slow, flaky = start_mirrors(model.root, [{"rate": 1 * MiB}, {}])
    flaky.set_down(True)
    events: list[Any] = []
    timer = threading.Timer(0.5, flaky.set_down, args=(False,))
    timer.start()
    try:
        events = lib_pull(model, catalog_file({"slow": slow, "flaky": flaky}), tmp_path / "dest")
    finally:
        timer.cancel()
    model.assert_identical(tmp_path / "dest")
    assert [e for e in of(events, SourceTrouble) if e.source == "flaky"], "the outage was not noticed"
    assert flaky.bytes_served > 0, "a failed mirror must be retried later, not forgotten"


# -- redirects ------------------------------------------------------------------------------------
def test_signed_redirect_expiring_mid_download_is_re_resolved(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    (cdn,) = start_mirrors(model.root, [{"rate": 1.5 * MiB, "require_signature": True}])
    (origin,) = start_mirrors(model.root, [{"faults": Faults(redirect_to=cdn.url), "signature_ttl": 0.4}])
    expired: list[str] = []
    check = cdn._signature_ok

    def counting(path: str, query: str) -> bool:
        ok = check(path, query)
        if not ok:
            expired.append(path)
        return ok

    cdn._signature_ok = counting  # type: ignore[method-assign]
    dest = tmp_path / "dest"
    lib_pull(model, catalog_file({"origin": origin}), dest, connections=4)

    model.assert_identical(dest)
    assert expired, "the download ended before a signed URL expired; the test proves nothing"
    assert origin.requests > 1
    assert cdn.bytes_served >= model.total_size
    assert origin.bytes_served == 0  # the origin only redirects


# -- nothing works --------------------------------------------------------------------------------
def test_all_mirrors_dead_library(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    mirrors = start_mirrors(model.root, 2)
    for m in mirrors:
        m.set_down(True)
    with pytest.raises(NoSourceError) as info:
        lib_pull(model, catalog_file(mirrors), tmp_path / "dest", give_up_after=10)
    assert info.value.exit_code == 4
    assert "m1" in str(info.value) and "m2" in str(info.value)


def test_all_mirrors_corrupt_gives_up(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    mirrors = start_mirrors(model.root, 2, faults=Faults(corrupt=True))
    dest = tmp_path / "dest"
    with pytest.raises(NoSourceError, match="dropped"):
        lib_pull(model, catalog_file(mirrors), dest)
    # Nothing bad was installed under a final name.
    assert not any((dest / rel).exists() for rel in SIZES if SIZES[rel])


def test_inconsistent_manifest_fails_instead_of_hanging(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
) -> None:
    d = model.manifest.to_dict()
    d["files"][0]["sha256"] = "0" * 64
    forged = tmp_path / "inconsistent.json"
    forged.write_text(json.dumps(d))
    (mirror,) = start_mirrors(model.root, 1)
    with pytest.raises(IntegrityError):
        lib_pull(forged, catalog_file([mirror]), tmp_path / "dest", deadline=10)
