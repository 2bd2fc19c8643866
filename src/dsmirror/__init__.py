"""dsmirror: verified, resumable, multi-source downloads of very large model files.

The public API re-exported here is what the ``dsmirror`` command line uses; anyone can ``import
dsmirror`` and do what the CLI does.
"""

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
from ._manifest import FileEntry, Manifest, Piece, create_manifest, load_manifest, parse_manifest, verify_tree
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
