"""``dsmirror demo``: the whole pull, on this machine only.

Starts local mirrors on 127.0.0.x — a fast one, a slow far one, and one that corrupts what it
sends — publishes a generated model with its piece manifest, and pulls it with the real pipeline
into a temporary folder: the display shows every source's measured speed, the corrupt mirror
being caught and dropped, and the final verification. No traffic leaves 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dsmirror._core.events import Event
from dsmirror._core.settings import Settings
from dsmirror._formats.catalog import Catalog, Mirror
from dsmirror._pull import PullOptions, pull
from dsmirror._verify.tree import create_manifest, verify_tree

__all__ = ["demo"]


@contextlib.contextmanager
def demo_mirrors(size: int, workdir: Path) -> Iterator[tuple[Path, Catalog]]:
    from dsmirror.testing import Faults, MirrorServer, write_random_tree

    model = workdir / "published" / "demo-model"
    shard = max(1, size // 3)
    sizes = {
        "config.json": 1234,
        "model-00001-of-00003.safetensors": shard,
        "model-00002-of-00003.safetensors": shard,
        "model-00003-of-00003.safetensors": size - 2 * shard + 1,
        "tokenizer/tokenizer.json": 300_001,
    }
    write_random_tree(model, sizes, seed=7)
    manifest = create_manifest(model, name="demo-model", piece_size=4 << 20)
    mpath = workdir / "demo-model.manifest.json"
    manifest.write(mpath)
    servers = [
        MirrorServer(model, "127.0.0.1", rate=120e6, latency=0.005),
        MirrorServer(model, "127.0.0.2", rate=30e6, latency=0.08),
        MirrorServer(
            model, "127.0.0.3", rate=60e6, latency=0.02, faults=Faults(corrupt=True, probability=0.5)
        ),
    ]
    for s in servers:
        s.start()
    try:
        catalog = Catalog(
            (
                Mirror("near-fast", "http", servers[0].url, region="lan"),
                Mirror("far-slow", "http", servers[1].url, region="global"),
                Mirror("flaky-corrupting", "http", servers[2].url, region="cn"),
            ),
            {},
            ("<demo>",),
        )
        yield mpath, catalog
    finally:
        for s in servers:
            s.stop()


def demo(size: int = 256 << 20, keep: Path | None = None) -> Iterator[Event]:
    """Run the demo pull; yields the pull's events. The result is verified once more at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="dsmirror-demo-"))
    try:
        with demo_mirrors(size, workdir) as (mpath, catalog):
            dest = keep or workdir / "downloaded"
            opts = PullOptions(dest=dest, give_up_after=30)
            yield from pull(str(mpath), catalog=catalog, settings=Settings.from_env(), options=opts)
            from dsmirror._formats.manifest import load_manifest

            report = verify_tree(load_manifest(mpath), dest)
            if not report.ok:  # pragma: no cover - would be a bug worth shouting about
                raise AssertionError(f"demo result does not verify: {report}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
