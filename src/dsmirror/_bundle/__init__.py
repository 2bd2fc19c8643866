"""Offline bundles: one plain tar with a manifest and the files it describes, verified on import.

``export_source`` finds what to export (``sources``), ``write_bundle`` streams it into the tar
format drawn in ``format`` (``export``); ``import_bundle`` reads a bundle back (``importer``) and
``import_folder`` a copied folder (``folder``), both through ``ingest`` (every piece hashed into a
store) into the layout ``target`` picks (a folder, an HF cache, an Ollama store).
"""

from __future__ import annotations

from dsmirror._bundle.export import write_bundle, write_bundle_file
from dsmirror._bundle.folder import folder_manifest, import_folder
from dsmirror._bundle.importer import import_bundle
from dsmirror._bundle.ingest import BundleOpened, catalog_pins
from dsmirror._bundle.sources import ExportSource, export_source

__all__ = [
    "BundleOpened",
    "ExportSource",
    "catalog_pins",
    "export_source",
    "folder_manifest",
    "import_bundle",
    "import_folder",
    "write_bundle",
    "write_bundle_file",
]
