"""Export a manifest as a Metalink v4 document (RFC 5854), for aria2c and other Metalink clients.

The document carries the same pieces as the manifest, so a Metalink client checks every piece
against the same SHA-256 digests dsmirror does::

    <?xml version='1.0' encoding='utf-8'?>
    <metalink xmlns="urn:ietf:params:xml:ns:metalink">
      <generator>dsmirror</generator>
      <file name="sub/model-00001.safetensors">          # the manifest's relative POSIX path
        <size>8388609</size>
        <hash type="sha-256">...</hash>                   # whole file
        <pieces length="8388608" type="sha-256">         # the manifest's piece size; omitted when
          <hash>...</hash>                                # the manifest has no piece hashes
          <hash>...</hash>
        </pieces>
        <url location="cn" priority="1">http://127.0.0.2:8000/sub/model-00001.safetensors</url>
      </file>
    </metalink>

URLs are built exactly as dsmirror builds them for a plain mirror of kind ``http``
(:func:`dsmirror._fetch.http.plain_url_for`: the mirror's URL joined with the percent-quoted path), so
both clients ask the same mirrors for the same bytes. Mirrors of other kinds (``hf``, ``ollama``,
``bittorrent``, ...) need a protocol a Metalink client does not speak and are left out.

``location`` is, per RFC 5854 section 4.2.16.1, an ISO 3166-1 alpha-2 country code; it is written
only for a two-letter region (``cn``, ``us``) and left out for ``global``, ``lan`` and other catalog
regions that name no country. ``priority`` is the catalog priority clamped to the RFC's 1..999999
(lower is preferred, as in the catalog).

A file of size 0 gets its size and whole-file hash but no ``<pieces>`` element (it has no pieces).

Documented in docs/formats.md#metalink-export.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from dsmirror._formats.catalog import Mirror, plain_url_for
from dsmirror._formats.manifest import FileEntry, Manifest

__all__ = ["METALINK_NS", "MetalinkURL", "to_meta4"]

METALINK_NS = "urn:ietf:params:xml:ns:metalink"
GENERATOR = "dsmirror"
#: RFC 5854 section 4.2.16.2: priority is an integer from 1 to 999999, lower is preferred.
MIN_PRIORITY = 1
MAX_PRIORITY = 999_999
_COUNTRY = re.compile(r"^[a-z]{2}$")

#: A plain mirror given without a catalog: ``(url, region, priority)``.
MetalinkURL = tuple[str, str, int]


def to_meta4(manifest: Manifest, mirrors: Sequence[Mirror] | Sequence[MetalinkURL]) -> bytes:
    """The Metalink v4 document (UTF-8 XML) of ``manifest`` served by the plain ``mirrors``.

    ``mirrors`` are catalog mirrors (those of kind ``http`` that are enabled are used) or
    ``(url, region, priority)`` tuples of plain mirrors.
    """
    bases = _plain_mirrors(mirrors)
    # The namespace is the default one, declared on the root: the element names stay unprefixed
    # without ET.register_namespace, which would change a process-wide table.
    root = ET.Element("metalink", xmlns=METALINK_NS)
    ET.SubElement(root, "generator").text = GENERATOR
    for f in manifest.files:
        _file_element(root, manifest, f, bases)
    ET.indent(root, space="  ")
    doc: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return doc + b"\n"


def _plain_mirrors(mirrors: Sequence[Mirror] | Sequence[MetalinkURL]) -> list[MetalinkURL]:
    out: list[MetalinkURL] = []
    for m in mirrors:
        if isinstance(m, Mirror):
            if m.kind == "http" and m.enabled:
                out.append((m.url, m.region, m.priority))
        else:
            url, region, priority = m
            out.append((url, region, priority))
    return out


def _file_element(root: ET.Element, manifest: Manifest, f: FileEntry, bases: Sequence[MetalinkURL]) -> None:
    el = ET.SubElement(root, "file", name=f.path)
    ET.SubElement(el, "size").text = str(f.size)
    ET.SubElement(el, "hash", type="sha-256").text = f.sha256
    if f.pieces and f.pieces[0]:
        pieces = ET.SubElement(el, "pieces", length=str(manifest.piece_size), type="sha-256")
        for digest in f.pieces:
            ET.SubElement(pieces, "hash").text = digest
    for base, region, priority in bases:
        attrs = {"location": region.lower()} if _COUNTRY.match(region.lower()) else {}
        attrs["priority"] = str(min(MAX_PRIORITY, max(MIN_PRIORITY, priority)))
        ET.SubElement(el, "url", attrs).text = plain_url_for(base)(f)
