"""The office box shares its proof: piece manifests of registry models, checked against the registry.

A ``dsmirror serve`` box hashes what it serves once, in pieces, and publishes one dsmirror piece
manifest per model (``dsmirror._serve._proofs``); a dsmirror client pulling ``hf://`` or
``ollama://`` through a catalog that names the box takes those piece hashes once they agree with
the registry's digests (``dsmirror._resolve.registries.proof``), so every piece from any source is
checked as it lands. Everything runs on loopback: a registry (an in-process server without
proofs), the box (a real ``dsmirror serve`` process, or in-process), a lying mirror
(``dsmirror.testing.MirrorServer`` corrupting what it sends), real ``dsmirror pull`` processes
and the real ``huggingface_hub`` client.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsmirror import create_manifest
from dsmirror._formats.catalog import Mirror
from dsmirror._formats.manifest import parse_manifest
from dsmirror._resolve.registries.proof import (
    PROOF_HEADER,
    PROOF_TIMEOUT,
    fetch_proofs,
    hf_proof_path,
    ollama_proof_path,
)
from dsmirror._serve import HfRepo, ModelIndex, OllamaModel, ServerThread, index_hf_cache, make_app
from dsmirror._serve._proofs import FileProof, ProofBook, _stat_key
from dsmirror.testing import Faults, MirrorServer
from dsmirror.testing.cli import DEAD_ENDPOINT as DEAD
from dsmirror.testing.cli import DSMIRROR_CLI, cli_env, hf_liar, json_events, mirror_catalog
from dsmirror.testing.hostile import (
    Behaviour,
    BlackHole,
    DripFeed,
    EndlessBody,
    GzipBomb,
    HostileServer,
    Respond,
)

REPO_ID = "acme/proven"
BIG = "model.safetensors"
BIG_SIZE = (64 << 20) + 12345  # nine 8 MiB pieces, the last one short
PIECE = 8 << 20
#: A pull slow enough for several progress reports (one every 0.25 s) over the big file.
SLOW = ("--json", "--max-rate", "24MB/s")


# -- helpers -------------------------------------------------------------------------------------
def _catalog(path: Path, *mirrors: tuple[str, str, str]) -> Path:
    """A catalog of these mirrors, in this order, 2 connections each (so a liar gets its share of the
    pieces, however fast the others are, and has at most 2 in flight when it is banned)."""
    return mirror_catalog(path, mirrors, max_connections=2)


def _pull(
    home: Path, ref: str, catalog: Path, *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    argv = [
        *DSMIRROR_CLI,
        "pull",
        ref,
        "--no-default-catalog",
        "--mirrors",
        str(catalog),
        "--give-up-after",
        "30",
    ]
    return subprocess.run(
        [*argv, *args], env=cli_env(home), capture_output=True, text=True, timeout=timeout, check=False
    )


def _events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json_events(proc.stdout)


def _notes(events: list[dict[str, Any]]) -> list[str]:
    return [n for e in events if e["event"] == "PlanNotes" for n in e["notes"]]


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".dsmirror" not in p.relative_to(root).parts
    }


def _write_model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / BIG).write_bytes(hashlib.shake_256(b"proven weights").digest(BIG_SIZE))
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    (root / "tokenizer.json").write_bytes(hashlib.shake_256(b"tok").digest(200_000))  # a git blob
    (root / "empty.txt").write_bytes(b"")
    return root


class ServeProcess:
    """``dsmirror serve --port 0 ...`` as a child process; ``url`` is read from its first line."""

    def __init__(self, home: Path, *args: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*DSMIRROR_CLI, "serve", "--port", "0", "--rescan", "1", *args],
            env=cli_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        assert self.proc.stderr is not None and self.proc.stdout is not None
        err = self.proc.stderr
        threading.Thread(target=lambda: self.stderr.extend(err), daemon=True).start()
        line = self.proc.stdout.readline()
        assert line.startswith("dsmirror serve: listening on "), line + "".join(self.stderr)
        self.url = line.rsplit(" ", 1)[1].strip()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _wait_for_proof(url: str, covers: set[str], timeout: float = 120) -> dict[str, Any]:
    """The box's proof at ``url`` once it lists ``covers`` (it hashes in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url, timeout=10)
        if r.status_code == 200:
            doc: dict[str, Any] = r.json()
            if covers <= {f["path"] for f in doc["files"]}:
                return doc
        assert time.monotonic() < deadline, f"no proof of {covers} at {url}: {r.status_code} {r.text[:200]}"
        time.sleep(0.2)


def _liar(root: Path, commit: str, origin: Path, *, count: int | None = None) -> MirrorServer:
    """An HF endpoint that serves the model's big file at ``commit``, flipping a byte of every body."""
    return hf_liar(root, REPO_ID, commit, BIG, origin / BIG, count=count)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("published") / "proven")


@pytest.fixture(scope="module")
def repo(model_dir: Path) -> HfRepo:
    return HfRepo.from_folder(REPO_ID, model_dir)


@pytest.fixture(scope="module")
def registry(repo: HfRepo) -> Iterator[ServerThread]:
    """The registry: the Hub's routes, whole-file digests only (no proof)."""
    with ServerThread(make_app(ModelIndex([repo]))) as srv:
        yield srv


@pytest.fixture(scope="module")
def box_home(tmp_path_factory: pytest.TempPathFactory, registry: ServerThread) -> Path:
    """The box's home: its HF cache filled by a real ``dsmirror pull --format hf`` from the registry."""
    home = tmp_path_factory.mktemp("box")
    cat = _catalog(home / "upstream.yaml", ("registry", "hf", registry.url))
    proc = _pull(home, f"hf://{REPO_ID}", cat, "--format", "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home


@pytest.fixture(scope="module")
def box(box_home: Path, repo: HfRepo) -> Iterator[ServeProcess]:
    with ServeProcess(box_home, "--hf-cache", str(box_home / "hf-cache")) as srv:
        _wait_for_proof(srv.url + hf_proof_path(REPO_ID, repo.commit), {BIG})
        yield srv


# -- the box publishes ---------------------------------------------------------------------------
def test_the_box_publishes_a_piece_manifest_of_what_it_verified(
    box: ServeProcess, box_home: Path, repo: HfRepo, model_dir: Path
) -> None:
    url = box.url + hf_proof_path(REPO_ID, repo.commit)
    r = httpx.get(url)
    manifest = parse_manifest(r.content, expected_sha256=r.headers["etag"].strip('"'))
    assert manifest.piece_size == PIECE and manifest.meta["commit"] == repo.commit
    data = (model_dir / BIG).read_bytes()
    big = manifest.file(BIG)
    assert big.sha256 == hashlib.sha256(data).hexdigest() and big.size == BIG_SIZE
    assert list(big.pieces) == [
        hashlib.sha256(data[o : o + PIECE]).hexdigest() for o in range(0, BIG_SIZE, PIECE)
    ]
    assert {f.path for f in manifest.files} == set(repo.files)  # small files too, hashed by content
    # Advertised on the Hub routes; unknown commits and other models have none.
    for route in (f"/api/models/{REPO_ID}/revision/main", f"/api/models/{REPO_ID}/tree/{repo.commit}"):
        assert httpx.get(box.url + route).headers[PROOF_HEADER] == url
    assert httpx.head(f"{box.url}/{REPO_ID}/resolve/main/{BIG}").headers[PROOF_HEADER] == url
    assert httpx.get(box.url + hf_proof_path(REPO_ID, "0" * 40)).status_code == 404
    assert httpx.get(box.url + "/dsmirror/proof/hf/acme/proven/main.json").status_code == 400
    # Kept in the state folder: one record per proven file, read again after a restart.
    records = list((box_home / "state" / "dsmirror" / "serve" / "proofs").glob("*.json"))
    assert len(records) == len(repo.files)
    status = httpx.get(box.url + "/dsmirror/status").json()["proofs"]
    assert status["files"] == len(repo.files) and status["queued"] == status["refused"] == 0
    assert status["hashed_bytes"] == sum(f.size for f in repo.files.values())


def test_the_real_hf_client_still_downloads_from_the_box(
    box: ServeProcess, tmp_path: Path, model_dir: Path
) -> None:
    script = textwrap.dedent(
        """
        import sys
        from huggingface_hub import snapshot_download
        print(snapshot_download(sys.argv[1]))
        """
    )
    env = cli_env(tmp_path, HF_ENDPOINT=box.url)
    proc = subprocess.run(
        [sys.executable, "-c", script, REPO_ID], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _digests(Path(proc.stdout.strip().splitlines()[-1])) == _digests(model_dir)


# -- the client checks every piece ---------------------------------------------------------------
def test_a_registry_model_through_the_box_is_checked_piece_by_piece(
    box: ServeProcess, repo: HfRepo, model_dir: Path, tmp_path: Path
) -> None:
    """A second mirror that corrupts what it sends is caught at its first piece, blamed and banned."""
    with _liar(tmp_path / "liar", repo.commit, model_dir) as liar:
        cat = _catalog(tmp_path / "m.yaml", ("box", "hf", box.url), ("liar", "hf", liar.url))
        events = _events(_pull(tmp_path, f"hf://{REPO_ID}", cat, "--dest", str(tmp_path / "out"), *SLOW))
        liar_sent = liar.bytes_served
    assert _digests(tmp_path / "out") == _digests(model_dir)
    assert any("box: piece hashes for" in n for n in _notes(events))
    # Caught at a piece, by its piece hash, before the file's end: a progress report after the
    # rejection still has part of the file to verify (all its pieces are in flight at once).
    rejected_at = next(
        i for i, e in enumerate(events) if e["event"] == "PieceRejected" and e["source"] == "liar"
    )
    rejected = events[rejected_at]
    assert rejected["source"] == "liar" and rejected["path"] == BIG
    assert rejected["reason"].startswith(f"piece {rejected['piece']} of {BIG} from liar has SHA-256")
    later = [e["verified_bytes"] for e in events[rejected_at:] if e["event"] == "Progress"]
    assert later and later[0] < BIG_SIZE, later
    assert any(e["event"] == "SourceDropped" and e["source"] == "liar" for e in events)
    done = next(e for e in events if e["event"] == "PullFinished")
    rejections = [e["source"] for e in events if e["event"] == "PieceRejected"]
    # Blamed once, banned at the second; a piece split between it and the box at the tail (its
    # back part from the liar) blames neither and is fetched again whole.
    assert 2 <= rejections.count("liar") <= 3 and set(rejections) <= {"liar", "box+liar"}, rejections
    rejected_pieces = len(rejections)
    # Bytes counted: what the liar sent is thrown away piece by piece, never a whole file.
    # (a split piece counts whole: the box's front part is thrown away with the liar's back part)
    assert done["corrupt_bytes"] < BIG_SIZE // 2 and liar_sent < BIG_SIZE // 2
    assert done["delivered_by_source"].get("liar", 0) == 0
    fetched = done["downloaded_bytes"] + done["corrupt_bytes"] + done["redundant_bytes"]
    assert fetched <= done["total_bytes"] + done["corrupt_bytes"] + done["redundant_bytes"]
    print(
        f"\nliar sent {liar_sent} bytes, {rejected_pieces} pieces rejected, corrupt {done['corrupt_bytes']}, "
        f"fetched {fetched} for {done['total_bytes']} ({fetched / done['total_bytes']:.3f}x)"
    )


def test_without_a_proof_the_same_liar_costs_whole_file_checks(
    registry: ServerThread, repo: HfRepo, model_dir: Path, tmp_path: Path
) -> None:
    """The contrast: a box that publishes no proof (an in-process server without one) and the same
    liar. Only the registry's whole-file digests: the pull is right, the liar is found by the
    engine's repair (issue 15 item 3's business), and the bytes it cost are printed beside the above."""
    with _liar(tmp_path / "liar", repo.commit, model_dir) as liar:
        cat = _catalog(tmp_path / "m.yaml", ("box", "hf", registry.url), ("liar", "hf", liar.url))
        events = _events(_pull(tmp_path, f"hf://{REPO_ID}", cat, "--dest", str(tmp_path / "out"), *SLOW))
        liar_sent = liar.bytes_served
    assert _digests(tmp_path / "out") == _digests(model_dir)
    assert not any("piece hashes for" in n for n in _notes(events))
    caught = [e for e in events if e["event"] in ("PieceRejected", "SourceDropped") and "liar" in e["source"]]
    assert caught or not liar_sent, "the liar sent bytes and was never caught"
    done = next(e for e in events if e["event"] == "PullFinished")
    fetched = done["downloaded_bytes"] + done["corrupt_bytes"] + done["redundant_bytes"]
    print(
        f"\nno proof: liar sent {liar_sent} bytes, corrupt {done['corrupt_bytes']}, "
        f"fetched {fetched} for {done['total_bytes']} ({fetched / done['total_bytes']:.3f}x)"
    )


def test_a_box_that_contradicts_the_registry_is_refused(
    registry: ServerThread, repo: HfRepo, model_dir: Path, tmp_path: Path
) -> None:
    """The registry lists the repo; a box whose proof says other bytes is not believed, nor asked."""
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    with open(other / BIG, "r+b") as fh:  # the box's copy differs from the registry's
        fh.seek(PIECE + 7)
        fh.write(b"\xff")
    stale = HfRepo.from_folder(REPO_ID, other, commit=repo.commit)
    book = ProofBook(piece_size=PIECE)
    with ServerThread(make_app(ModelIndex([stale]), proofs=book)) as liar_box:
        assert book.wait_idle(60)
        assert httpx.get(liar_box.url + hf_proof_path(REPO_ID, repo.commit)).status_code == 200
        cat = _catalog(tmp_path / "m.yaml", ("registry", "hf", registry.url), ("stale", "hf", liar_box.url))
        proc = _pull(tmp_path, f"hf://{REPO_ID}", cat, "--dest", str(tmp_path / "out"), "--json")
        events = _events(proc)
    refused = [n for n in _notes(events) if n.startswith("stale: its piece manifest is refused")]
    assert len(refused) == 1 and BIG in refused[0] and "the registry says" in refused[0], _notes(events)
    assert _digests(tmp_path / "out") == _digests(model_dir)  # whole-file checks, the registry's bytes
    done = next(e for e in events if e["event"] == "PullFinished")
    assert done["delivered_by_source"].get("stale", 0) < BIG_SIZE  # never asked for the contradicted file
    assert not any(e["event"] == "PieceRejected" for e in events)


def test_a_box_file_whose_bytes_rotted_gets_no_proof(model_dir: Path, tmp_path: Path) -> None:
    """Proving reads the file: a blob that is not what its name says is not vouched for."""
    folder = tmp_path / "rotten"
    shutil.copytree(model_dir, folder)
    repo = HfRepo.from_folder(REPO_ID, folder)
    with open(folder / BIG, "r+b") as fh:  # after indexing: the name (etag) stays, the bytes change
        fh.seek(3)
        fh.write(b"\x00\x01")
    book = ProofBook(piece_size=PIECE)
    with ServerThread(make_app(ModelIndex([repo]), proofs=book)) as srv:
        assert book.wait_idle(60)
        doc = httpx.get(srv.url + hf_proof_path(REPO_ID, repo.commit)).json()
    assert book.summary()["refused"] == 1
    assert BIG not in {f["path"] for f in doc["files"]} and "config.json" in {f["path"] for f in doc["files"]}


def test_a_file_pulled_through_is_proven_and_a_restart_hashes_nothing(
    registry: ServerThread, repo: HfRepo, model_dir: Path, tmp_path: Path
) -> None:
    """``serve --upstream``: what it pulled through (verified) is proven once it is in place; the proof
    is kept in the state folder, so the next box process believes it without reading the file."""
    upstream = _catalog(tmp_path / "upstream.yaml", ("registry", "hf", registry.url))
    args = (
        "--upstream",
        "--no-default-catalog",
        "--mirrors",
        str(upstream),
        "--hf-cache",
        str(tmp_path / "cache"),
    )
    with ServeProcess(tmp_path / "box", *args) as box:
        url = box.url + hf_proof_path(REPO_ID, repo.commit)
        assert httpx.get(url).status_code == 404  # nothing held yet
        cat = _catalog(tmp_path / "m.yaml", ("box", "hf", box.url))
        _events(_pull(tmp_path, f"hf://{REPO_ID}", cat, "--dest", str(tmp_path / "out"), "--json"))
        assert _digests(tmp_path / "out") == _digests(model_dir)
        # (an empty file is never fetched, so the box does not hold it)
        doc = _wait_for_proof(url, set(repo.files) - {"empty.txt"})
    data = (model_dir / BIG).read_bytes()
    big = next(f for f in doc["files"] if f["path"] == BIG)
    assert big["pieces"] == [
        hashlib.sha256(data[o : o + PIECE]).hexdigest() for o in range(0, BIG_SIZE, PIECE)
    ]
    # A new book over the same state folder: every proof read back, no byte hashed.
    index = ModelIndex(index_hf_cache(tmp_path / "cache"))
    book = ProofBook(piece_size=PIECE, state_dir=tmp_path / "box" / "state" / "dsmirror" / "serve")
    with ServerThread(make_app(index, proofs=book)) as again:
        assert book.wait_idle(60)
        assert httpx.get(again.url + hf_proof_path(REPO_ID, repo.commit)).json() == doc
    assert book.bytes_hashed == 0


@pytest.mark.parametrize(
    "behaviour",
    [BlackHole(), DripFeed(interval=0.2, head=True), EndlessBody(), GzipBomb()],
    ids=["black-hole", "head-trickle", "endless", "gzip-bomb"],
)
def test_a_hostile_mirror_costs_a_pull_a_bounded_proof_request(behaviour: Behaviour) -> None:
    """Every non-official mirror is asked for a proof: one that never answers, drips or floods is
    cut within PROOF_TIMEOUT and PROOF_LIMIT, with a note, and the pull goes on without it."""
    with HostileServer(behaviour) as srv:
        mirrors = [Mirror("hostile", "hf", srv.url.rstrip("/")), Mirror("hub", "hf", DEAD, official=True)]
        proofs, notes = fetch_proofs(mirrors, hf_proof_path(REPO_ID, "a" * 40), timeout=60)
        assert srv.wait_closed(5)
        held = srv.busy_seconds
    assert proofs == [] and len(notes) == 1 and notes[0].startswith("hostile: no piece manifest"), notes
    assert srv.requests == 1 and held <= PROOF_TIMEOUT + 1  # the official one is not asked at all


def test_a_proof_that_is_no_manifest_is_noted_and_ignored() -> None:
    bad = Respond(200, b'{"format": "dsmirror-manifest", "version": 1}', content_type="application/json")
    with HostileServer(bad) as srv:
        proofs, notes = fetch_proofs([Mirror("odd", "hf", srv.url.rstrip("/"))], "/x.json", timeout=10)
    assert proofs == [] and len(notes) == 1 and notes[0].startswith("odd: its piece manifest is unusable")


# -- Ollama ------------------------------------------------------------------------------------------
def test_an_ollama_model_through_the_box_is_checked_piece_by_piece(tmp_path: Path) -> None:
    gguf = tmp_path / "blob.gguf"
    gguf.write_bytes(hashlib.shake_256(b"gguf").digest((20 << 20) + 3))
    model = OllamaModel.from_files(
        "library", "tiny", "1b", [("application/vnd.ollama.image.model", gguf)], b"{}"
    )
    digest = next(d for d, b in model.blobs.items() if isinstance(b, Path)).removeprefix("sha256:")
    book = ProofBook(piece_size=1 << 20)
    liar_root = tmp_path / "liar" / "v2" / "library" / "tiny" / "blobs"
    liar_root.mkdir(parents=True)
    os.link(gguf, liar_root / f"sha256:{digest}")
    rel = f"v2/library/tiny/blobs/sha256:{digest}"
    with (
        ServerThread(make_app(ModelIndex(ollama_models=[model]), proofs=book)) as srv,
        MirrorServer(tmp_path / "liar", host="127.0.0.3", faults=Faults(corrupt=True, paths={rel})) as liar,
    ):
        assert book.wait_idle(60)
        manifest_sha = model.digest.removeprefix("sha256:")
        r = httpx.get(f"{srv.url}/v2/library/tiny/manifests/1b")
        assert r.headers[PROOF_HEADER] == srv.url + ollama_proof_path(manifest_sha)
        cat = _catalog(tmp_path / "m.yaml", ("box", "ollama", srv.url), ("liar", "ollama", liar.url))
        proc = _pull(
            tmp_path,
            "ollama://library/tiny:1b",
            cat,
            "--format",
            "dir",
            "--dest",
            str(tmp_path / "out"),
            "--json",
        )
        events = _events(proc)
    assert (tmp_path / "out" / "blobs" / f"sha256-{digest}").read_bytes() == gguf.read_bytes()
    assert any("box: piece hashes for 2 file(s)" in n for n in _notes(events)), _notes(events)
    rejected = [e for e in events if e["event"] == "PieceRejected"]
    sources = [e["source"] for e in rejected]
    # Banned at its second bad piece (a third may be in flight on its other connection).
    assert 2 <= sources.count("liar") <= 3 and set(sources) <= {"liar", "box+liar"}, sources
    assert any(e["event"] == "SourceDropped" and e["source"] == "liar" for e in events)


def test_a_box_that_lies_consistently_cannot_get_other_bytes_installed(tmp_path: Path) -> None:
    """A box (not dsmirror's: its proof is forged here) serves other bytes under an Ollama blob's
    digest, with piece hashes of those bytes and the registry's digest. Every piece then matches
    the box's hashes; the blob's digest, the registry's, still decides: nothing is installed."""
    real = hashlib.shake_256(b"real").digest((3 << 20) + 5)
    forged = tmp_path / "forged.gguf"
    forged.write_bytes(hashlib.shake_256(b"forged").digest(len(real)))
    (tmp_path / "real.gguf").write_bytes(real)
    honest = OllamaModel.from_files(
        "library", "tiny", "1b", [("application/vnd.ollama.image.model", tmp_path / "real.gguf")], b"{}"
    )
    digest = next(d for d, b in honest.blobs.items() if isinstance(b, Path))
    lying = OllamaModel(
        honest.host, "library", "tiny", "1b", honest.manifest, {**honest.blobs, digest: forged.resolve()}
    )
    book = ProofBook(piece_size=1 << 20)
    data = forged.read_bytes()
    pieces = tuple(hashlib.sha256(data[o : o + (1 << 20)]).hexdigest() for o in range(0, len(data), 1 << 20))
    book._vouch(forged.resolve(), _stat_key(forged.resolve()), FileProof(digest[7:], 1 << 20, pieces))
    with ServerThread(make_app(ModelIndex(ollama_models=[lying]), proofs=book)) as box:
        book.wait_idle(30)
        cat = _catalog(tmp_path / "m.yaml", ("box", "ollama", box.url))
        out = tmp_path / "out"
        proc = _pull(tmp_path, "ollama://library/tiny:1b", cat, "--format", "dir", "--dest", str(out))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "piece hashes for" in proc.stdout + proc.stderr  # the forged proof was taken: it agreed
    assert not (out / "blobs" / f"sha256-{digest[7:]}").exists()
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


# -- signatures ----------------------------------------------------------------------------------------
def _keys(tmp: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp / "publisher.pem", tmp / "publisher.pub.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def test_a_signature_next_to_a_served_folder_is_passed_on(model_dir: Path, tmp_path: Path) -> None:
    """A folder served with its model.sig: a client that knows the publisher checks it, piece by piece."""
    folder = tmp_path / "signed"
    shutil.copytree(model_dir, folder)
    priv, pub = _keys(tmp_path)
    sign = [
        *DSMIRROR_CLI,
        "manifest",
        "sign",
        str(folder),
        "--key",
        str(priv),
        "--shards",
        "--piece-size",
        "1MiB",
    ]
    subprocess.run(
        [*sign, "-o", str(folder / "model.sig")], env=cli_env(tmp_path), check=True, capture_output=True
    )
    listed = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = [f for f in listed if f != "model.sig"]
    manifest = create_manifest(folder, name="signed", piece_size=1 << 20, files=files)
    manifest.write(tmp_path / "signed.manifest.json")
    with ServeProcess(tmp_path / "box", "--folder", f"{tmp_path / 'signed.manifest.json'}:{folder}") as box:
        info = httpx.get(f"{box.url}/api/models/dsmirror/signed/revision/main")
        assert info.headers["X-Dsmirror-Signature"].endswith("/model.sig")
        cat = _catalog(tmp_path / "m.yaml", ("box", "hf", box.url))
        out = tmp_path / "out"
        proc = _pull(
            tmp_path, "hf://dsmirror/signed", cat, "--dest", str(out), "--signature-key", str(pub), "--json"
        )
        notes = _notes(_events(proc))
        assert any(n.startswith("model.sig verified, signed by") for n in notes), notes
        assert _digests(out) == _digests(folder)
        (tmp_path / "other-key").mkdir()
        _, other = _keys(tmp_path / "other-key")
        bad = _pull(
            tmp_path,
            "hf://dsmirror/signed",
            cat,
            "--dest",
            str(tmp_path / "out2"),
            "--signature-key",
            str(other),
        )
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert not (tmp_path / "out2" / BIG).exists()
