"""``dsmirror seed``: share installed models over BitTorrent, and the options ``pull`` shares with it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsmirror._core.errors import DsmirrorError, Interrupted, UsageError
from dsmirror._core.units import format_bytes, format_rate, parse_size
from dsmirror.cli._app import JsonOpt, TorrentFormatOpt, app, console, err_console
from dsmirror.cli._console import styled

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.live import Live

    from dsmirror._core.events import Event
    from dsmirror._fetch.swarm.config import SeedingStarted, SeedStatus, SwarmConfig
    from dsmirror._share.seed import SeedTarget

# ``.._swarm`` and ``.._torrent`` load libtorrent: imported by the code that seeds, so that ``pull``
# (which shares this module's options and rendering) does not load it unless it joins a swarm.

ListenOpt = Annotated[
    str | None,
    typer.Option(
        "--listen", help="BitTorrent listen address HOST:PORT (default 0.0.0.0:6881 or the next free)."
    ),
]
PeerOpt = Annotated[
    list[str] | None,
    typer.Option("--peer", help="Connect to this BitTorrent peer HOST:PORT directly (repeatable)."),
]
LsdOpt = Annotated[bool, typer.Option("--lsd/--no-lsd", help="Find peers on the local network (multicast).")]
DhtOpt = Annotated[bool, typer.Option("--dht/--no-dht", help="Find peers through the BitTorrent DHT.")]


def swarm_config(
    *,
    listen: str | None,
    peers: list[str] | None,
    lsd: bool = True,
    dht: bool = False,
    upload_rate: str | None = None,
    max_peers: int | None = None,
    torrent: Path | None = None,
    seed_after: bool = False,
    enabled: bool = True,
) -> SwarmConfig:
    from dsmirror._fetch.swarm.config import SwarmConfig

    return SwarmConfig(
        enabled=enabled,
        listen=listen,
        peers=tuple(peers or ()),
        lsd=lsd,
        dht=dht,
        upload_rate=parse_size(upload_rate) if upload_rate else None,
        max_peers=max_peers,
        torrent=torrent,
        seed=seed_after,
    )


def _is_store_ref(item: str) -> bool:
    """``hf://...``, ``ollama://...``, or ``name:tag`` that is not a file or folder here."""
    if item.startswith(("hf://", "ollama://")):
        return True
    return ":" in item and "/" not in item.split(":", 1)[1] and not Path(item).exists()


def _targets(items: list[str], source: Path | None, torrent: Path | None, fmt: str) -> list[SeedTarget]:
    from dsmirror._core.settings import Settings
    from dsmirror._fetch.swarm.torrent import TORRENT_FORMATS, check_torrent, create_torrent, load_torrent
    from dsmirror._formats.manifest import load_manifest
    from dsmirror._formats.private import PrivateArea
    from dsmirror._install.store_model import find_store_model
    from dsmirror._share.seed import SeedTarget, own_swarm_target, seed_targets_in, store_seed_target

    if fmt not in TORRENT_FORMATS:
        raise UsageError(f"--torrent-format must be one of {', '.join(TORRENT_FORMATS)}")
    settings = Settings.from_env()
    cache = settings.state_dir / "torrents"
    out: list[SeedTarget] = []
    for text in items:
        if source is None and _is_store_ref(text):
            model = find_store_model(settings, text)
            out.append(
                store_seed_target(
                    model,
                    format=fmt,
                    cache=cache,
                    on_hashing=lambda msg: err_console.print(msg, highlight=False),
                )
            )
            continue
        item = Path(text)
        if item.is_dir() and source is None:
            found = seed_targets_in(item)
            if not found:
                raise UsageError(
                    f"{item} holds no torrent of a dsmirror pull",
                    hint="seed a folder with MANIFEST --from DIR (or TORRENT --from DIR)",
                )
            out += found
            area = PrivateArea(item)
            for mid in sorted(p.stem for p in area.torrents_dir.glob("*.torrent")):
                recorded = area.installed_manifest(mid)
                if not recorded.is_file():
                    continue
                try:  # its own swarm too: pulls that know no torrent meet there
                    own = own_swarm_target(load_manifest(recorded), item, out)
                except DsmirrorError:
                    continue  # a record that does not load: the torrents above still seed
                if own is not None:
                    out.append(own)
            continue
        if source is None:
            raise UsageError(
                f"{item}: say where its files are with --from DIR",
                hint="or seed an installed model: hf://org/name, ollama://name:tag",
            )
        if item.suffix == ".torrent":
            out.append(SeedTarget(load_torrent(item), source))
            continue
        m = load_manifest(item)
        if torrent is not None:
            t = load_torrent(torrent)
        elif (recorded := PrivateArea(source).torrent(m.sha256)).is_file():
            t = load_torrent(recorded)
        else:
            cached = cache / f"{m.sha256}-{fmt}.torrent"
            if cached.is_file():
                t = load_torrent(cached)
            else:
                err_console.print(
                    f"hashing {source} to make the {fmt} torrent of {m.name} ...", highlight=False
                )
                t = create_torrent(m, source, format=fmt)
                t.write(cached)
        check_torrent(m, t)
        out.append(SeedTarget(t, source))
        own = own_swarm_target(m, source, out)  # pulls that know no torrent meet there
        if own is not None:
            out.append(own)
    return out


@app.command("seed")
def seed_cmd(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="Installed models (hf://org/name[@rev], ollama://[host/]ns/name:tag or name:tag), "
            "folders pulled by dsmirror, or a MANIFEST or TORRENT with --from DIR.",
            show_default=False,
        ),
    ],
    source: Annotated[
        Path | None, typer.Option("--from", help="Folder holding the files of MANIFEST/TORRENT.")
    ] = None,
    torrent: Annotated[
        Path | None,
        typer.Option("--torrent", help="The torrent of MANIFEST (default: made from --from DIR)."),
    ] = None,
    torrent_format: TorrentFormatOpt = "hybrid",
    listen: ListenOpt = None,
    peer: PeerOpt = None,
    lsd: LsdOpt = True,
    dht: DhtOpt = False,
    upload_rate: Annotated[
        str | None, typer.Option("--upload-rate", help="Upload cap for all peers, e.g. 20MB/s.")
    ] = None,
    max_peers: Annotated[
        int | None, typer.Option("--max-peers", min=1, help="Most peer connections at once.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Seed installed models where they are (no copy) until Ctrl-C or SIGTERM."""
    from dsmirror._share.seed import seed

    cfg = swarm_config(
        listen=listen, peers=peer, lsd=lsd, dht=dht, upload_rate=upload_rate, max_peers=max_peers
    )
    chosen = _targets(list(targets), source, torrent, torrent_format)
    render_seed(seed(chosen, cfg), console, json_out=json_out)


# -- rendering -----------------------------------------------------------------------------------
class SeedSplit:
    """Split a pull's events at ``SeedingStarted``: the pull part, then the seeding part."""

    def __init__(self, events: Iterable[Event]) -> None:
        self._it = iter(events)
        self._first: Event | None = None

    def pull_events(self) -> Iterator[Event]:
        from dsmirror._fetch.swarm.config import SeedingStarted

        for ev in self._it:
            if isinstance(ev, SeedingStarted):
                self._first = ev
                return
            yield ev

    def seed_events(self) -> Iterator[Event]:
        if self._first is None:
            return
        yield self._first
        yield from self._it


def _view(ev: SeedStatus, started: SeedingStarted | None, t0: float) -> Group:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        ("seeding ", "bold"),
        f"{len(ev.torrents)} model(s)",
        f" on port {started.listen_port}" if started else "",
        f"  up {format_rate(ev.upload_rate)}, {format_bytes(ev.uploaded)} in {time.monotonic() - t0:.0f} s",
        ("  (Ctrl-C stops)", "dim"),
    )
    t = Table(box=None, pad_edge=False, header_style="dim")
    for col in ("model", "peer", "client", "up", "uploaded", "has"):
        t.add_column(col, justify="right" if col in ("up", "uploaded", "has") else "left")
    for tor in ev.torrents:
        t.add_row(
            tor.name,
            f"{len(tor.peers)} peers",
            tor.state,
            format_rate(tor.upload_rate),
            format_bytes(tor.uploaded),
            "",
        )
        for p in sorted(tor.peers, key=lambda p: -p.upload_rate):
            t.add_row(
                "",
                p.address,
                p.client[:24],
                format_rate(p.upload_rate),
                format_bytes(p.uploaded),
                f"{p.progress * 100:.0f}%",
            )
    return Group(head, t)


def render_seed(events: Iterable[Event], console: Console, *, json_out: bool = False) -> None:
    """Show seeding events until they end or the user interrupts; an interrupt is a clean stop."""
    from dsmirror._core.events import event_to_dict
    from dsmirror._fetch.swarm.config import SeedingStarted, SeedingStopped, SeedStatus

    it = iter(events)
    started: SeedingStarted | None = None
    live: Live | None = None
    t0 = time.monotonic()
    last_plain = 0.0
    uploaded = 0
    stopped = False
    try:
        for ev in it:
            if json_out:
                sys.stdout.write(json.dumps(event_to_dict(ev), default=str) + "\n")
                sys.stdout.flush()
            if isinstance(ev, SeedingStarted):
                started = ev
                if not json_out:
                    # A model may be in two swarms (its hybrid torrent and its manifest's own):
                    # named once, with the count of torrents.
                    names = list(dict.fromkeys(ev.torrents))
                    more = f" ({len(ev.torrents)} torrents)" if len(names) < len(ev.torrents) else ""
                    console.print(
                        styled("seeding", "bold"),
                        f"{', '.join(names)}{more} on port {ev.listen_port}",
                        highlight=False,
                    )
                    for m in ev.magnets:
                        console.print(f"  {m}", highlight=False, soft_wrap=True)
                    if console.is_terminal:
                        from rich.live import Live

                        live = Live(console=console, refresh_per_second=2, transient=False)
                        live.start()
            elif isinstance(ev, SeedStatus):
                uploaded = ev.uploaded
                if live is not None:
                    live.update(_view(ev, started, t0))
                elif not json_out and time.monotonic() - last_plain >= 10:
                    last_plain = time.monotonic()
                    peers = sum(len(t.peers) for t in ev.torrents)
                    up = f"up {format_rate(ev.upload_rate)}, {format_bytes(ev.uploaded)} uploaded"
                    console.print(f"seeding: {peers} peers, {up}", highlight=False)
            elif isinstance(ev, SeedingStopped):
                uploaded, stopped = ev.uploaded, True
    except (KeyboardInterrupt, Interrupted):
        close = getattr(it, "close", None)
        if close is not None:
            close()  # runs the generator's cleanup: the session stops
    finally:
        if live is not None:
            live.stop()
    if started is None:
        return  # a pull without --seed: nothing was seeded
    if json_out and not stopped:
        sys.stdout.write(
            json.dumps({"event": "SeedingStopped", "uploaded": uploaded, "seconds": time.monotonic() - t0})
            + "\n"
        )
        sys.stdout.flush()
    elif not json_out:
        console.print(f"stopped seeding: {format_bytes(uploaded)} uploaded", highlight=False)
