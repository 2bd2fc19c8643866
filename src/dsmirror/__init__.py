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
    from ._bundle import (
        BundleOpened,
        export_source,
        import_bundle,
        import_folder,
        write_bundle,
        write_bundle_file,
    )
    from ._catalog import Catalog, Mirror, ModelAlias, load_catalog, load_default_catalog
    from ._clock import Clock, FakeClock, SystemClock
    from ._doctor import DoctorConfig, DoctorReport, run_doctor
    from ._engine import EngineConfig, fetch
    from ._errors import (
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
        SourceError,
        SourceNotFound,
        SourceUnavailable,
        Stalled,
        StorageError,
        URLExpired,
        UsageError,
        VerifyFailed,
    )
    from ._events import (
        Event,
        PieceRejected,
        Progress,
        PullFinished,
        PullStarted,
        SourceDropped,
        SourceProgress,
        SourceTrouble,
    )
    from ._manifest import (
        FileEntry,
        Manifest,
        Piece,
        create_manifest,
        load_manifest,
        parse_manifest,
        verify_tree,
    )
    from ._pull import PullOptions, PullPlan, pull, resolve
    from ._reuse import LocalReuse, PullDryRun
    from ._scheduler import Scheduler, SchedulerConfig
    from ._settings import Settings
    from ._sources import HttpSource, Source, SourceInfo
    from ._store import Store

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
    "Catalog": "_catalog",
    "Mirror": "_catalog",
    "ModelAlias": "_catalog",
    "load_catalog": "_catalog",
    "load_default_catalog": "_catalog",
    "Clock": "_clock",
    "FakeClock": "_clock",
    "SystemClock": "_clock",
    "DoctorConfig": "_doctor",
    "DoctorReport": "_doctor",
    "run_doctor": "_doctor",
    "EngineConfig": "_engine",
    "fetch": "_engine",
    "AlreadyInProgress": "_errors",
    "BadResponse": "_errors",
    "CatalogError": "_errors",
    "DiskFull": "_errors",
    "DsmirrorError": "_errors",
    "ImportRejected": "_errors",
    "InputError": "_errors",
    "IntegrityError": "_errors",
    "Interrupted": "_errors",
    "ManifestError": "_errors",
    "ManifestMismatch": "_errors",
    "NoSourceError": "_errors",
    "PieceMismatch": "_errors",
    "RateLimited": "_errors",
    "SourceError": "_errors",
    "SourceNotFound": "_errors",
    "SourceUnavailable": "_errors",
    "Stalled": "_errors",
    "StorageError": "_errors",
    "URLExpired": "_errors",
    "UsageError": "_errors",
    "VerifyFailed": "_errors",
    "Event": "_events",
    "PieceRejected": "_events",
    "Progress": "_events",
    "PullFinished": "_events",
    "PullStarted": "_events",
    "SourceDropped": "_events",
    "SourceProgress": "_events",
    "SourceTrouble": "_events",
    "FileEntry": "_manifest",
    "Manifest": "_manifest",
    "Piece": "_manifest",
    "create_manifest": "_manifest",
    "load_manifest": "_manifest",
    "parse_manifest": "_manifest",
    "verify_tree": "_manifest",
    "PullOptions": "_pull",
    "PullPlan": "_pull",
    "pull": "_pull",
    "resolve": "_pull",
    "LocalReuse": "_reuse",
    "PullDryRun": "_reuse",
    "Scheduler": "_scheduler",
    "SchedulerConfig": "_scheduler",
    "Settings": "_settings",
    "HttpSource": "_sources",
    "Source": "_sources",
    "SourceInfo": "_sources",
    "Store": "_store",
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
