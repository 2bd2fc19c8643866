"""dsmirror: verified, resumable, multi-source downloads of very large model files.

The public API re-exported here is what the ``dsmirror`` command line uses; anyone can ``import
dsmirror`` and do what the CLI does.

The names are loaded on first use (PEP 562): ``import dsmirror`` alone imports none of the
submodules, so a command such as ``dsmirror pull`` only pays for the modules it uses (not for
libtorrent, the doctor's or the bundles' code). ``from dsmirror import pull`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsmirror._bundle import (
        BundleOpened,
        export_source,
        import_bundle,
        import_folder,
        write_bundle,
        write_bundle_file,
    )
    from dsmirror._core.clock import Clock, FakeClock, SystemClock
    from dsmirror._core.errors import (
        AlreadyInProgress,
        BadResponse,
        CatalogError,
        DiskFull,
        DsmirrorError,
        ImportRejected,
        InputError,
        IntegrityError,
        Interrupted,
        ManifestError,
        ManifestMismatch,
        NoSourceError,
        PieceMismatch,
        RateLimited,
        SignatureInvalid,
        SourceError,
        SourceNotFound,
        SourceUnavailable,
        Stalled,
        StorageError,
        URLExpired,
        UsageError,
        VerifyFailed,
    )
    from dsmirror._core.events import (
        Event,
        PieceRejected,
        Progress,
        PullFinished,
        PullStarted,
        SourceDropped,
        SourceProgress,
        SourceTrouble,
    )
    from dsmirror._core.settings import Settings
    from dsmirror._doctor import DoctorConfig, DoctorReport, run_doctor
    from dsmirror._fetch.engine import EngineConfig, fetch
    from dsmirror._fetch.http import HttpSource
    from dsmirror._fetch.reuse import LocalReuse, PullDryRun
    from dsmirror._fetch.source import Source
    from dsmirror._formats.catalog import Catalog, Mirror, ModelAlias, load_catalog, load_default_catalog
    from dsmirror._formats.manifest import FileEntry, Manifest, Piece, load_manifest, parse_manifest
    from dsmirror._journal.store import Store
    from dsmirror._pull import pull
    from dsmirror._resolve.plan import PullOptions, PullPlan
    from dsmirror._resolve.resolve import resolve
    from dsmirror._schedule.info import SourceInfo
    from dsmirror._schedule.scheduler import Scheduler, SchedulerConfig
    from dsmirror._verify.tree import create_manifest, verify_tree

__version__ = "0.1.0"

__all__ = [
    "AlreadyInProgress",
    "BadResponse",
    "BundleOpened",
    "Catalog",
    "CatalogError",
    "Clock",
    "DiskFull",
    "DoctorConfig",
    "DoctorReport",
    "DsmirrorError",
    "EngineConfig",
    "Event",
    "FakeClock",
    "FileEntry",
    "HttpSource",
    "ImportRejected",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "LocalReuse",
    "Manifest",
    "ManifestError",
    "ManifestMismatch",
    "Mirror",
    "ModelAlias",
    "NoSourceError",
    "Piece",
    "PieceMismatch",
    "PieceRejected",
    "Progress",
    "PullDryRun",
    "PullFinished",
    "PullOptions",
    "PullPlan",
    "PullStarted",
    "RateLimited",
    "Scheduler",
    "SchedulerConfig",
    "Settings",
    "SignatureInvalid",
    "Source",
    "SourceDropped",
    "SourceError",
    "SourceInfo",
    "SourceNotFound",
    "SourceProgress",
    "SourceTrouble",
    "SourceUnavailable",
    "Stalled",
    "StorageError",
    "Store",
    "SystemClock",
    "URLExpired",
    "UsageError",
    "VerifyFailed",
    "__version__",
    "create_manifest",
    "export_source",
    "fetch",
    "import_bundle",
    "import_folder",
    "load_catalog",
    "load_default_catalog",
    "load_manifest",
    "parse_manifest",
    "pull",
    "resolve",
    "run_doctor",
    "verify_tree",
    "write_bundle",
    "write_bundle_file",
]

# Public name -> the submodule that defines it.
_LAZY: dict[str, str] = {
    "BundleOpened": "_bundle",
    "export_source": "_bundle",
    "import_bundle": "_bundle",
    "import_folder": "_bundle",
    "write_bundle": "_bundle",
    "write_bundle_file": "_bundle",
    "Catalog": "_formats.catalog",
    "Mirror": "_formats.catalog",
    "ModelAlias": "_formats.catalog",
    "load_catalog": "_formats.catalog",
    "load_default_catalog": "_formats.catalog",
    "Clock": "_core.clock",
    "FakeClock": "_core.clock",
    "SystemClock": "_core.clock",
    "DoctorConfig": "_doctor",
    "DoctorReport": "_doctor",
    "run_doctor": "_doctor",
    "EngineConfig": "_fetch.engine",
    "fetch": "_fetch.engine",
    "AlreadyInProgress": "_core.errors",
    "BadResponse": "_core.errors",
    "CatalogError": "_core.errors",
    "DiskFull": "_core.errors",
    "DsmirrorError": "_core.errors",
    "ImportRejected": "_core.errors",
    "InputError": "_core.errors",
    "IntegrityError": "_core.errors",
    "Interrupted": "_core.errors",
    "ManifestError": "_core.errors",
    "ManifestMismatch": "_core.errors",
    "NoSourceError": "_core.errors",
    "PieceMismatch": "_core.errors",
    "RateLimited": "_core.errors",
    "SignatureInvalid": "_core.errors",
    "SourceError": "_core.errors",
    "SourceNotFound": "_core.errors",
    "SourceUnavailable": "_core.errors",
    "Stalled": "_core.errors",
    "StorageError": "_core.errors",
    "URLExpired": "_core.errors",
    "UsageError": "_core.errors",
    "VerifyFailed": "_core.errors",
    "Event": "_core.events",
    "PieceRejected": "_core.events",
    "Progress": "_core.events",
    "PullFinished": "_core.events",
    "PullStarted": "_core.events",
    "SourceDropped": "_core.events",
    "SourceProgress": "_core.events",
    "SourceTrouble": "_core.events",
    "FileEntry": "_formats.manifest",
    "Manifest": "_formats.manifest",
    "Piece": "_formats.manifest",
    "create_manifest": "_verify.tree",
    "load_manifest": "_formats.manifest",
    "parse_manifest": "_formats.manifest",
    "verify_tree": "_verify.tree",
    "PullOptions": "_resolve.plan",
    "PullPlan": "_resolve.plan",
    "pull": "_pull",
    "resolve": "_resolve.resolve",
    "LocalReuse": "_fetch.reuse",
    "PullDryRun": "_fetch.reuse",
    "Scheduler": "_schedule.scheduler",
    "SchedulerConfig": "_schedule.scheduler",
    "Settings": "_core.settings",
    "HttpSource": "_fetch.http",
    "Source": "_fetch.http",
    "SourceInfo": "_fetch.http",
    "Store": "_journal.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
