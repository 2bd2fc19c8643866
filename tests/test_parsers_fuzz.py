"""Hostile documents against the parsers of untrusted input (issue 12, item 8, Low, and the fuzz test).

Whatever a manifest, a catalog, a model.sig, a torrent or a bundle holds, reading it raises a
dsmirror error and nothing else, and the CLI ends with one ``dsmirror: error:`` line naming the
file and its exit code (7 for a file the user handed in; 3 for a model.sig or a bundle, which fail
their check like any other unreadable one), never a traceback. The forms that used to escape:
JSON or YAML nested 5,000+ deep (``RecursionError``), numbers of more than 4,300 digits
(``ValueError`` from Python's ``int``), lone surrogates (``UnicodeEncodeError``), and for YAML
also impossible dates and exponential merge keys. Paths that collide on case- or
normalisation-insensitive filesystems are refused too.

Then ``hypothesis`` generates documents: valid ones with mutated fields, deep nesting, huge
numbers, surrogates, odd paths (``../x``, ``a/./b``, ``C:x``, NUL, ``.dsmirror/x``, case and
NFC/NFD collisions). The library may only accept or raise dsmirror errors; what it accepts is safe
(every path inside the folder, no two colliding, canonical bytes that parse back) and opening a
store for it writes nothing outside the destination; and a sample goes through the CLI
(``verify M DIR``, ``pull M --dry-run --no-default-catalog --mirrors C``), which exits 2 or 7 with
one line for what the library refuses, and writes nothing outside the destination.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsmirror
from dsmirror import (
    CatalogError,
    DsmirrorError,
    ImportRejected,
    InputError,
    ManifestError,
    SignatureInvalid,
    Store,
)
from dsmirror._bundle.format import FILES_PREFIX, MANIFEST_MEMBER
from dsmirror._bundle.importer import import_bundle
from dsmirror._formats.catalog import parse_catalog
from dsmirror._formats.manifest import parse_manifest
from dsmirror._formats.paths import path_problem
from dsmirror._formats.signature import bundle_statement, parse_statement, signer_kind

CLI = [sys.executable, "-c", "from dsmirror.cli import main; main()"]
PS = 16 << 10
HEX = "ab" * 32
DEEP = 6000  # beyond every recursion limit in the way (Python's 1000, the YAML composer's)
BIG = "1" + "0" * 5000  # beyond Python's 4300-digit int limit
LOOP = "http://127.0.0.1:9/"  # mirrors in generated catalogs are loopback only; nothing listens

FUZZ = settings(max_examples=150, deadline=None, database=None)
CLI_SAMPLE = settings(
    max_examples=4,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def manifest_doc(**top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "dsmirror-manifest",
        "version": 1,
        "name": "fuzz",
        "piece_size": PS,
        "files": [
            {"path": "a.bin", "size": PS + 1, "sha256": HEX, "pieces": [HEX, HEX]},
            {"path": "dir/b.bin", "size": 10, "sha256": HEX, "pieces": None},
            {"path": "e.bin", "size": 0, "sha256": HEX, "pieces": []},
        ],
    }
    doc.update(top)
    return doc


def with_file(*paths: str) -> dict[str, Any]:
    doc = manifest_doc()
    doc["files"] += [{"path": path, "size": 1, "sha256": HEX, "pieces": None} for path in paths]
    return doc


def dump(doc: object) -> bytes:
    """JSON text of ``doc`` (lone surrogates as ``\\ud800`` escapes); placeholders made real."""
    text = json.dumps(doc)  # ensure_ascii: any str, surrogates too, is written as escapes
    return text.replace('"@BIG@"', BIG).replace('"@DEEP@"', "[" * DEEP + "]" * DEEP).encode()


def one_line(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """stderr is one ``dsmirror: error:`` line (and perhaps a ``hint:`` line), no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.lstrip().startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("dsmirror: error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(root: Path, *, skip: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` but those under ``skip``: path -> (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            st = (here / name).lstat()
            out[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *map(str, args)],
            env=cli_env,
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


# -- item 8: each hostile form, each parser -------------------------------------------------------
HOSTILE_MANIFESTS: dict[str, tuple[bytes, str]] = {
    "nested 6000 deep": (dump(manifest_doc(meta={"x": "@DEEP@"})), "nested too deeply"),
    "a 5001-digit size": (dump(manifest_doc()).replace(b'"size": 10', b'"size": ' + BIG.encode()), "4300"),
    "a 5001-digit version": (dump(manifest_doc(version="@BIG@")), "4300"),
    "a lone surrogate in the name": (dump(manifest_doc(name="x\ud800")), "lone surrogate"),
    "a lone surrogate in a path": (dump(with_file("a\udc80.bin")), "lone surrogate"),
    "a lone surrogate in meta": (dump(manifest_doc(meta={"k": "\udfff"})), "not valid Unicode"),
    "NaN in meta": (dump(manifest_doc()).replace(b'"fuzz"', b'"fuzz", "meta": {"x": NaN}'), "NaN"),
    "meta nested 40 deep": (dump(manifest_doc(meta={"x": json.loads("[" * 40 + "]" * 40)})), "deeper"),
    "a file A and a folder a/": (dump(with_file("A.BIN/x")), "case"),
    "NFC and NFD": (dump(with_file("\u00e9", "e\u0301")), "normalisations"),
    "the private folder in capitals": (dump(with_file(".DSMIRROR/x")), ".dsmirror"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_raises_a_manifest_error(case: str) -> None:
    data, fragment = HOSTILE_MANIFESTS[case]
    with pytest.raises(ManifestError, match=re.escape(fragment)) as info:
        parse_manifest(data, origin="m.json")
    assert str(info.value).startswith("m.json: ")


@pytest.mark.parametrize(
    "case", ["nested 6000 deep", "a 5001-digit size", "a lone surrogate in a path", "NFC and NFD"]
)
def test_the_cli_refuses_a_hostile_manifest_with_exit_7(
    case: str, tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    data, fragment = HOSTILE_MANIFESTS[case]
    (tmp_path / "m.json").write_bytes(data)
    (tmp_path / "d").mkdir()
    r = cli("verify", "m.json", "d")
    assert r.returncode == 7, r.stderr
    one_line(r, "m.json", fragment)


def merge_bomb(levels: int) -> str:
    """A few hundred bytes whose merge keys PyYAML's flatten_mapping expands to 10**levels entries."""
    text = f"version: 1\nmirrors:\n  - &a0 {{name: a0, kind: http, url: '{LOOP}'}}\n"
    for k in range(1, levels + 1):
        text += f"  - &a{k} {{<<: [{', '.join([f'*a{k - 1}'] * 10)}], name: a{k}}}\n"
    return text


HOSTILE_CATALOGS: dict[str, tuple[str, str]] = {
    "nested 6000 deep": ("version: 1\nmirrors: " + "[" * DEEP + "]" * DEEP + "\n", "nested too deeply"),
    "a 5001-digit version": (f"version: {BIG}\n", "too long"),
    "a 5001-digit priority": (
        f"version: 1\nmirrors:\n  - {{name: a, kind: http, url: '{LOOP}', priority: {BIG}}}\n",
        "mirrors[0].priority",
    ),
    "a lone surrogate": (
        'version: 1\nmirrors:\n  - {name: a, kind: http, url: "http://h\\ud800/"}\n',
        "surrogate",
    ),
    "a date that does not exist": (
        "version: 1\nmirrors:\n  - {name: a, kind: http, url: 2001-13-45}\n",
        "month",
    ),
    "a mapping that merges itself": (
        f"version: 1\nmirrors:\n  - &m {{name: a, kind: http, url: '{LOOP}', <<: *m}}\n",
        "merges itself",
    ),
    "a merge of a scalar": ("version: 1\nmirrors:\n  - {name: a, <<: 3}\n", "invalid merge"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CATALOGS))
def test_a_hostile_catalog_raises_a_catalog_error(case: str) -> None:
    text, fragment = HOSTILE_CATALOGS[case]
    with pytest.raises(CatalogError, match=re.escape(fragment)) as info:
        parse_catalog(text, "c.yaml")
    assert str(info.value).startswith("c.yaml")


def test_merge_keys_are_resolved_once_each_not_copied_exponentially() -> None:
    # PyYAML's flatten_mapping: 26 s for 8 levels, ten times more for each level beyond.
    catalog = parse_catalog(merge_bomb(40), "c.yaml")
    assert [m.name for m in catalog.mirrors] == [f"a{k}" for k in range(41)]
    assert {m.url for m in catalog.mirrors} == {LOOP}


@pytest.mark.parametrize("case", ["nested 6000 deep", "a 5001-digit priority", "a lone surrogate"])
def test_the_cli_refuses_a_hostile_catalog_with_exit_7(
    case: str, tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    text, fragment = HOSTILE_CATALOGS[case]
    (tmp_path / "c.yaml").write_text(text)
    (tmp_path / "m.json").write_bytes(dump(manifest_doc()))
    r = cli("pull", "m.json", "--dry-run", "--no-default-catalog", "--mirrors", "c.yaml")
    assert r.returncode == 7, r.stderr
    one_line(r, "c.yaml", fragment)


SIG_FORMS = {
    "nested 6000 deep": b'{"verificationMaterial": {"publicKey": {}}, "x": '
    + b"[" * DEEP
    + b"]" * DEEP
    + b"}",
    "a 5001-digit number": b'{"verificationMaterial": {"publicKey": {}}, "x": ' + BIG.encode() + b"}",
    "not UTF-8": b'{"verificationMaterial": "\xff"}',
}


@pytest.mark.parametrize("case", list(SIG_FORMS))
def test_a_hostile_model_sig_raises_signature_invalid(case: str) -> None:
    data = SIG_FORMS[case]
    for read in (signer_kind, bundle_statement, parse_statement):
        with pytest.raises(SignatureInvalid) as info:
            read(data, origin="model.sig")
        assert str(info.value).startswith("model.sig: ")


def test_a_signed_statement_with_odd_shard_offsets_is_refused() -> None:
    for offset in (BIG, "\u00b2", "1" * 20):  # too long for int(), a digit int() refuses, beyond any file
        statement = {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "m", "digest": {"sha256": HEX}}],
            "predicateType": "https://model_signing/signature/v1.0",
            "predicate": {
                "serialization": {"method": "shards", "hash_type": "sha256", "shard_size": PS},
                "resources": [
                    {"name": f"a.bin:0:{offset}", "algorithm": f"sha256-sharded-{PS}", "digest": HEX}
                ],
            },
        }
        with pytest.raises(SignatureInvalid, match="bad shard"):
            parse_statement(json.dumps(statement).encode(), origin="model.sig")


def bencode(x: object) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(map(bencode, x)) + b"e"
    assert isinstance(x, dict)
    return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(x.items())) + b"e"


INFO = {b"name": b"n", b"piece length": PS, b"pieces": b"\0" * 20, b"length": 100}
TORRENTS = {
    "nested 6000 deep": b"d4:info" + bencode(INFO)[:-1] + b"1:x" + b"l" * DEEP + b"e" * DEEP + b"ee",
    "a 5001-digit length": b"d4:info" + bencode(INFO).replace(b"i100e", b"i" + BIG.encode() + b"e") + b"e",
}


@pytest.mark.parametrize("case", list(TORRENTS))
def test_the_cli_refuses_a_hostile_torrent_with_exit_7(
    case: str, tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    (tmp_path / "t.torrent").write_bytes(TORRENTS[case])
    r = cli("torrent", "show", "t.torrent")
    assert r.returncode == 7, r.stderr
    one_line(r, "t.torrent", "not a valid torrent")


def pax_record(text: bytes) -> bytes:
    line = b" " + text + b"\n"
    n = len(line)
    while len(str(n).encode()) + len(line) != n:
        n = len(str(n).encode()) + len(line)
    return str(n).encode() + line


@pytest.mark.parametrize(
    "record",
    [b"GNU.sparse.size=9x", b"size=" + BIG.encode(), b"path=\xed\xa0\x80", b"path=../../outside"],
    ids=["sparse size not a number", "size of 5001 digits", "path a lone surrogate", "path outside"],
)
def test_a_bundle_with_a_hostile_tar_header_is_rejected(record: bytes, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"x" * 40_000)
    m = dsmirror.create_manifest(src, name="t", piece_size=PS)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        pax = tarfile.TarInfo("././@PaxHeader")
        pax.type, pax.size = tarfile.XHDTYPE, len(pax_record(record))
        tar.addfile(pax, io.BytesIO(pax_record(record)))
        head = tarfile.TarInfo(MANIFEST_MEMBER)
        head.size = len(m.canonical_bytes)
        tar.addfile(head, io.BytesIO(m.canonical_bytes))
        body = tarfile.TarInfo(FILES_PREFIX + "a.bin")
        body.size = 40_000
        tar.addfile(body, io.BytesIO(b"x" * 40_000))
    # Rejected (exit 3), or (a size that tarfile reads as 0) its manifest is not JSON (exit 7).
    with pytest.raises((ImportRejected, ManifestError), match=r"^b\.tar"):
        for _ in import_bundle(io.BytesIO(buf.getvalue()), origin="b.tar", dest=tmp_path / "dest"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) in (["src"], ["dest", "src"])


# -- the fuzz test: generated manifests ------------------------------------------------------------
ODD_PATHS = [
    *[
        "../x",
        "a/../../x",
        "a/./b",
        "./a",
        "C:x",
        "c:/x",
        ".dsmirror/x",
        ".DSMIRROR/x",
        ".dsmirror",
        "a//b",
        "a/",
        "/etc/passwd",
        "..",
        ".",
    ],
    *["A", "a", "a/x", "A/x", "A.BIN", "dir", "dir/B.BIN", "SS", "ss", "con", "nul.txt", "x[/]"],
    *["", "a\x00b", "\x00", "a\\b", "\ud800", "a\udc80", "\u00e9", "e\u0301", "\u00df", "\u212b", "\u00c5"],
    *["x\x1b[2J", "\u202etxt.exe", "a" * 300, "a/" * 100 + "b"],
]
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
PATHS = st.one_of(
    st.sampled_from(ODD_PATHS),
    TEXT,
    st.lists(st.sampled_from([*ODD_PATHS, "b"]), min_size=1, max_size=4).map("/".join),
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, PS, PS - 1, 2**50, 2**51, 2**64, 20_000_001, "@BIG@", "@DEEP@"]),
    st.floats(),
    TEXT,
    st.sampled_from([HEX, "AB" * 32, "g" * 64, "", "dsmirror-manifest"]),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    """A valid manifest, a few fields mutated, then perhaps its bytes damaged."""
    doc = manifest_doc()
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["top", "file field", "path", "add file", "pieces", "meta", "drop"]))
        files: list[Any] | None = doc["files"] if isinstance(doc.get("files"), list) else None
        entries = [f for f in files or [] if isinstance(f, dict)]
        entry = draw(st.sampled_from(entries)) if entries else None
        if what == "top":
            key = draw(st.sampled_from(["format", "version", "name", "piece_size", "files", "torrent", "x"]))
            doc[key] = draw(VALUES)
        elif what == "file field" and entry is not None:
            entry[draw(st.sampled_from(["path", "size", "sha256", "pieces", "x"]))] = draw(VALUES)
        elif what == "path" and entry is not None:
            entry["path"] = draw(PATHS)
        elif what == "add file" and files is not None:
            size = draw(st.sampled_from([0, 1, PS, 2 * PS + 3]))
            pieces = draw(st.sampled_from([None, [HEX] * -(-size // PS), [], ["x"]]))
            files.append({"path": draw(PATHS), "size": size, "sha256": HEX, "pieces": pieces})
        elif what == "pieces" and entry is not None:
            entry["pieces"] = draw(
                st.one_of(st.none(), st.lists(st.sampled_from([HEX, "", "x", 1]), max_size=4))
            )
        elif what == "meta":
            doc["meta"] = draw(st.dictionaries(TEXT, VALUES, max_size=3))
        elif what == "drop":
            doc.pop(draw(st.sampled_from(sorted(doc))), None)
    data = dump(doc)
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


def fold(path: str) -> str:
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


def check_accepted(m: dsmirror.Manifest) -> None:
    """What the parser accepts is safe to write: paths inside, none colliding, bytes that parse back."""
    paths = [f.path for f in m.files]
    assert all(path_problem(p) is None for p in paths)
    names = {fold(p) for p in paths}
    folders = {fold("/".join(p.split("/")[:k])) for p in paths for k in range(1, p.count("/") + 1)}
    assert len(names) == len(paths) and not names & folders
    assert parse_manifest(m.canonical_bytes).sha256 == m.sha256
    assert len(m.pieces) == m.num_pieces == sum(len(f.pieces) for f in m.files)


@FUZZ
@given(manifests())
def test_fuzzed_manifests_are_accepted_safely_or_refused_with_a_manifest_error(data: bytes) -> None:
    try:
        m = parse_manifest(data, origin="m.json")
    except ManifestError as exc:
        assert str(exc).startswith("m.json: ") and "\n" not in str(exc)
        return
    check_accepted(m)


@settings(FUZZ, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=manifests())
def test_opening_a_store_for_a_fuzzed_manifest_writes_only_inside_the_destination(
    data: bytes, tmp_path: Path
) -> None:
    with contextlib.suppress(ManifestError):
        m = parse_manifest(data)
        box = tmp_path / f"box{len(list(tmp_path.iterdir()))}"
        dest = box / "in" / "dest"
        dest.mkdir(parents=True)
        with contextlib.suppress(DsmirrorError), Store.open(dest, m):
            pass
        assert sorted(p.relative_to(box).as_posix() for p in box.iterdir()) == ["in"]
        assert sorted(p.relative_to(box).as_posix() for p in (box / "in").iterdir()) == ["in/dest"]


@CLI_SAMPLE
@given(data=manifests())
def test_the_cli_verifies_a_fuzzed_manifest_or_refuses_it_with_one_line(
    data: bytes, tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    box = tmp_path / f"box{len(list(tmp_path.iterdir()))}"
    (box / "d").mkdir(parents=True)
    (box / "m.json").write_bytes(data)
    before = snapshot(tmp_path, skip=(tmp_path / "clihome",))
    r = cli("verify", "m.json", "d", cwd=box)
    try:
        parse_manifest(data)
    except ManifestError:
        assert r.returncode == 7, r.stderr
        one_line(r, "m.json")
    else:
        assert r.returncode in (0, 3), r.stderr
        assert "Traceback" not in r.stderr
    assert snapshot(tmp_path, skip=(tmp_path / "clihome",)) == before


# -- the fuzz test: generated catalogs ------------------------------------------------------------
URLS = [LOOP, "http://127.0.0.2:8080/m/", "https://127.0.0.1/", "magnet:?xt=urn:btih:" + "a" * 40]
URLS += [
    "ftp://127.0.0.1/",
    "http://",
    "http://127.0.0.1:99999/",
    "http://127.0.0.1/ x",
    "udp://127.0.0.1:6881",
]
ODD_SCALARS = [
    *[
        "hf",
        "http",
        "htp",
        "true",
        "no",
        "~",
        "null",
        "1.0e+3",
        "1e3",
        "2001-13-45",
        "2001-02-03",
        "0o17",
        "1_000",
        ".inf",
        ".nan",
        "*undefined",
        "@x",
        "`x`",
    ],
    *["''", '""', "!!binary aGk=", "!!python/object:os.system x", "&a x", "'quoted'", '"\\ud800"', '"\\x00"'],
    *["a: b", BIG, "-" + BIG, "0x" + "f" * 20, "[" * 50 + "]" * 50, "{a: 1}", "[1, 2]"],
]
SCALARS = st.one_of(
    st.sampled_from(URLS + ODD_SCALARS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    TEXT.map(json.dumps),
)
MIRROR_KEYS = [
    "name",
    "kind",
    "url",
    "region",
    "official",
    "priority",
    "weight",
    "max_connections",
    "enabled",
    "x",
]
ALIAS_KEYS = [
    "hf",
    "modelscope",
    "ollama",
    "manifest",
    "manifest_sha256",
    "magnet",
    "include",
    "exclude",
    "signature",
    "publisher",
    "require_signature",
    "description",
    "x",
]


@st.composite
def catalogs(draw: st.DrawFn) -> str:
    """YAML text: a valid catalog with fields replaced by odd scalars, structures and YAML features."""
    mirrors: list[str] = []
    anchors: list[str] = []
    for k in range(draw(st.integers(0, 3))):
        fields = {"name": f"m{k}", "kind": "http", "url": LOOP}
        for _ in range(draw(st.integers(0, 3))):
            fields[draw(st.sampled_from(MIRROR_KEYS))] = draw(SCALARS)
        merges = draw(st.lists(st.sampled_from(anchors), max_size=3)) if anchors else []
        merge = f"<<: [{', '.join(merges)}], " if merges else ""
        anchor = f"&a{k} " if draw(st.booleans()) else ""
        if anchor:
            anchors.append(f"*a{k}")
        body = ", ".join(f"{key}: {value}" for key, value in fields.items())
        mirrors.append(f"  - {anchor}{{{merge}{body}}}")
    models = []
    for k in range(draw(st.integers(0, 2))):
        fields = {"hf": "org/repo"}
        for _ in range(draw(st.integers(0, 3))):
            fields[draw(st.sampled_from(ALIAS_KEYS))] = draw(SCALARS)
        key = draw(st.sampled_from(["a", "b:7b", "A", "1", "x y", "~"]))
        models.append(f"  {key}{k}: {{{', '.join(f'{a}: {b}' for a, b in fields.items())}}}")
    odd_heads = ["version: 2", "version: '1'", f"version: {BIG}", "", "version: 1\nversion: 1"]
    head = draw(st.sampled_from(["version: 1"] * 5 + odd_heads))
    text = "\n".join([head, "mirrors:", *mirrors, "models:", *models]) + "\n"
    # 700 levels are past the YAML composer's recursion limit already (6000 take a second to scan).
    odd_tails = ["extra: 1\n", "mirrors: " + "[" * 700 + "]" * 700 + "\n", "\t: x\n", "? [a]\n: b\n"]
    return text + draw(st.sampled_from([""] * 8 + odd_tails))


@FUZZ
@given(catalogs())
def test_fuzzed_catalogs_are_read_or_refused_with_a_catalog_error(text: str) -> None:
    try:
        catalog = parse_catalog(text, "c.yaml")
    except DsmirrorError as exc:
        assert isinstance(exc, InputError | dsmirror.UsageError), repr(exc)
        assert str(exc).startswith("c.yaml") and "\n" not in str(exc)
        return
    for mirror in catalog.mirrors:
        mirror.url.encode()  # no lone surrogate got through


@CLI_SAMPLE
@given(text=catalogs())
def test_the_cli_pulls_dry_with_a_fuzzed_catalog_or_refuses_it_with_one_line(
    text: str, tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    box = tmp_path / f"box{len(list(tmp_path.iterdir()))}"
    box.mkdir()
    (box / "c.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    (box / "m.json").write_bytes(dump(manifest_doc()))
    outside = (tmp_path / "clihome", box / "dest")
    before = snapshot(tmp_path, skip=outside)
    r = cli(
        "pull",
        "m.json",
        "--dry-run",
        "--no-default-catalog",
        "--mirrors",
        "c.yaml",
        "--dest",
        "dest",
        cwd=box,
    )
    try:
        parse_catalog(text, "c.yaml")
    except DsmirrorError:
        assert r.returncode in (2, 7), r.stderr
        one_line(r, "c.yaml")
    else:
        assert r.returncode in (0, 4), r.stderr
        assert "Traceback" not in r.stderr
    assert snapshot(tmp_path, skip=outside) == before
