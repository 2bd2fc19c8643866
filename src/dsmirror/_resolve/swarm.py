"""The BitTorrent side of resolving: a model's swarm added to a plan, and magnet / .torrent REFs.

Imported only when the swarm is enabled or the REF is a magnet or a .torrent (it loads libtorrent).

Which swarm a manifest pull joins: the one a ``--torrent FILE``, a ``.torrent`` REF or a magnet REF
names, as given (that torrent's metadata is at hand or comes from its peers); otherwise the
manifest's own swarm, whose torrent every machine derives from the manifest alone
(``derived_torrent``), so machines of a LAN that pull the same manifest find each other by LSD and
share from the first piece, with no ``--peer``, ``--listen`` or ``--torrent``, before any of them
has a complete copy. A model is shared that way when its manifest records info-hashes (made with
``manifest create --torrent``; manifests made before the derived torrent existed included), when
its catalog alias names a magnet, or with ``--prefer p2p``.

Registry pulls (``hf://``, ``ollama://``, and aliases of them) follow the same rule: their
manifests have whole-file SHA-256s only, and their derived torrent has placeholder piece hashes
(see ``dsmirror._fetch.swarm.torrent``), so machines of a LAN pulling the same revision meet in
one swarm; a piece from a peer is checked by its file's digest, and a peer that sent bad bytes is
found by the repair and banned by address. With the default ``--prefer auto`` such a pull shares
when its alias names a magnet (the catalog says the model is published for sharing), not
otherwise: LSD announces what a machine pulls to its whole LAN, which a pull of a private repo
should not do unasked, and pieces that cannot be checked on arrival are taken from peers only
when the user or the catalog asked for it. ``--prefer p2p`` always shares. Only a manifest with
neither piece hashes nor whole-file SHA-256s (nothing to check it by) has no derived torrent and
keeps the swarm its info-hashes or alias name, as before.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import libtorrent as lt

from dsmirror._core.errors import InputError, StorageError, UsageError
from dsmirror._core.settings import Settings
from dsmirror._fetch.swarm.source import SwarmSource
from dsmirror._fetch.swarm.torrent import Torrent, derived_torrent, load_torrent, magnet_for, parse_magnet
from dsmirror._formats.catalog import Catalog
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, Manifest
from dsmirror._formats.private import PrivateArea
from dsmirror._journal.store import Store
from dsmirror._resolve.manifest import load_manifest_ref
from dsmirror._resolve.plan import PullOptions, PullPlan, http_sources
from dsmirror._resolve.ref import Ref, parse_ref

__all__ = ["attach_swarm", "catalog_trackers", "resolve_swarm_ref", "swarm_only_plan"]


def catalog_trackers(catalog: Catalog) -> tuple[str, ...]:
    """Tracker announce URLs from the catalog's enabled mirrors of kind ``bittorrent``."""
    return tuple(
        m.url
        for m in catalog.mirrors_of_kind("bittorrent")
        if m.url.startswith(("udp://", "http://", "https://"))
    )


def attach_swarm(plan: PullPlan, ref: Ref, catalog: Catalog, options: PullOptions) -> PullPlan:
    """Add the model's swarm to ``plan`` when a torrent, a magnet or recorded info-hashes name one."""
    cfg = replace(options.swarm, trackers=options.swarm.trackers + catalog_trackers(catalog))
    if not cfg.enabled or plan.swarms or plan.swarm_only is not None:
        return plan
    torrent = load_torrent(cfg.torrent) if cfg.torrent else None
    magnet: str | None = None
    if torrent is None and ref.kind == "torrent-file" and ref.path is not None:
        torrent = load_torrent(ref.path)
    if torrent is None and ref.kind == "magnet":
        magnet = ref.text
    alias_magnet: str | None = None
    if ref.kind == "alias":
        alias = catalog.models.get(ref.text)
        alias_magnet = alias.magnet if alias is not None else None
    if torrent is None and magnet is None:
        shared = bool(plan.manifest.torrent) or alias_magnet is not None or options.prefer == "p2p"
        torrent = derived_torrent(plan.manifest) if shared else None
    if torrent is None and magnet is None:
        magnet = alias_magnet or magnet_for(plan.manifest)
    if torrent is None and magnet is None:
        return plan
    sw = SwarmSource(plan.manifest, config=cfg, torrent=torrent, magnet=magnet)
    plan.swarms.append(sw)
    before = plan.after_install

    def after_install(store: Store) -> None:
        if before is not None:
            before(store)
        if sw.torrent is not None:
            with contextlib.suppress(StorageError):
                sw.torrent.write(PrivateArea(store.dest).torrent(plan.manifest.sha256))

    plan.after_install = after_install
    return plan


def resolve_swarm_ref(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    """``pull magnet:...`` / ``pull X.torrent``: the manifest comes from the catalog if it can.

    A catalog model whose ``magnet:`` names the same info-hash, or whose manifest records it,
    lends its manifest (pinned as usual), so the files are checked against it and its mirrors can
    join the swarm. Without one, the pull is a :class:`SwarmOnlyPull`: from peers alone, checked by
    the torrent's own hashes, and the manifest is made from the installed files.
    """
    if ref.kind == "torrent-file":
        assert ref.path is not None
        t = load_torrent(ref.path)
        hashes = {t.btih, t.btmh} - {None}
    else:
        hashes = set(parse_magnet(ref.text)) - {None}
    for alias in catalog.models.values():
        alias_hashes: set[str | None] = set()
        if alias.magnet:
            with contextlib.suppress(InputError):
                alias_hashes = set(parse_magnet(alias.magnet)) - {None}
        if not alias.manifest:
            continue
        pin = options.manifest_sha256 or alias.manifest_sha256
        if alias_hashes & hashes:
            manifest = load_manifest_ref(parse_ref(alias.manifest), pin, timeout=options.metadata_timeout)
        else:
            continue
        dest = options.dest or Path.cwd() / manifest.folder_name
        plan = PullPlan(manifest, list(http_sources(catalog, options)), dest)
        return attach_swarm(plan, ref, catalog, replace(options, swarm=replace(options.swarm, enabled=True)))
    trackers = options.swarm.trackers + catalog_trackers(catalog)
    return swarm_only_plan(ref, replace(options, swarm=replace(options.swarm, trackers=trackers)))


def swarm_only_plan(ref: Ref, options: PullOptions) -> PullPlan:
    """The plan of a pull of a torrent no manifest describes (see :class:`SwarmOnlyPull`)."""
    # Imported here: a manifest pull (the swarm added to its plan) needs none of it, nor the install
    # layer it loads (~5 ms before the swarm is ready).
    from dsmirror._fetch.swarm.only import SwarmOnlyPull

    why = "no manifest is known for this torrent"
    if not options.swarm.enabled:
        raise UsageError(f"{why}, and --no-p2p leaves no source", hint="drop --no-p2p to pull it from peers")
    if options.format != "dir":
        raise UsageError(
            f"{why}: it can only be pulled into a folder, not with --format {options.format}",
            hint="pull the model's manifest or hf:// / ollama:// reference instead",
        )
    if options.dry_run:
        raise UsageError(
            f"{why}: its files are known only once peers sent them; --dry-run has nothing to show"
        )
    torrent: Torrent | None = None
    magnet: str | None = None
    if ref.kind == "torrent-file":
        assert ref.path is not None
        torrent = load_torrent(ref.path)
        btih, btmh = torrent.btih, torrent.btmh
        name = torrent.name
    else:
        magnet = ref.text
        btih, btmh = parse_magnet(magnet)
        name = str(lt.parse_magnet_uri(magnet).name or "")
    name = name or str(btih or btmh)
    dest = options.dest or Path.cwd() / Manifest(name, DEFAULT_PIECE_SIZE, ()).folder_name
    job = SwarmOnlyPull(name, dest, btih, btmh, torrent=torrent, magnet=magnet, ref=ref.text)
    # The plan's manifest only names the model: the files are known once the torrent is.
    return PullPlan(Manifest(name, DEFAULT_PIECE_SIZE, ()), [], dest, swarm_only=job)
