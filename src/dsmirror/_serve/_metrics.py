"""``GET /metrics``: the status document in the Prometheus text exposition format (version 0.0.4).

Made from the same document as ``/dsmirror/status`` (``_status``), so the page, scripts and the
office's monitoring read the same counters. Every metric has ``# HELP`` and ``# TYPE``; counters end
in ``_total`` and only grow while the server runs (the BitTorrent upload restarts with seeding)::

    dsmirror_info{version}                       gauge    1, labelled with the version
    dsmirror_uptime_seconds                      gauge
    dsmirror_served_bytes_total{kind}            counter  file bytes sent, by route kind (hf,
                                                          modelscope, ollama, folder, status, other)
    dsmirror_http_responses_total{kind,code}     counter  responses by route kind and status code
    dsmirror_requests_in_flight                  gauge
    dsmirror_upstream_bytes_total{source}        counter  bytes the pull-through fetched, by mirror
    dsmirror_saved_bytes                         gauge    served - fetched upstream
    dsmirror_pulls_active                        gauge    pull-through jobs queued or running
    dsmirror_pulls_finished_total{result}        counter  result: done, failed
    dsmirror_bittorrent_seeding                  gauge    1 while serve --seed is seeding
    dsmirror_bittorrent_torrents                 gauge
    dsmirror_bittorrent_peers                    gauge    peers connected now
    dsmirror_bittorrent_uploaded_bytes_total     counter
    dsmirror_bittorrent_upload_bytes_per_second  gauge
    dsmirror_errors_total{kind}                  counter  warnings and errors, by kind (_errors)
    dsmirror_models{format}                      gauge    models held: hf, ollama, dir
    dsmirror_models_verified{format}             gauge    of them, checked by dsmirror
    dsmirror_model_bytes{format}                 gauge    bytes held
    dsmirror_files_served                        gauge

Label values (mirror names come from catalogs) are escaped as the format says: backslash, double
quote and line feed.

Documented in docs/formats.md#the-status-document-and-metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FORMATS = ("hf", "ollama", "dir")

Sample = tuple[Mapping[str, str], float]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                self.lines.append(f"{name} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.metric(name, kind, help_text, [({}, value)])


def render_metrics(doc: Mapping[str, Any]) -> str:
    """The Prometheus text of a status document (``Status.document``)."""
    out = _Text()
    out.metric(
        "dsmirror_info",
        "gauge",
        "dsmirror serve is running; its version.",
        [({"version": doc["version"]}, 1)],
    )
    out.one("dsmirror_uptime_seconds", "gauge", "Seconds since the server started.", doc["uptime"])
    served = doc["served"]
    out.metric(
        "dsmirror_served_bytes_total",
        "counter",
        "Bytes of model files sent to clients, by route kind.",
        [({"kind": kind}, n) for kind, n in served["by_kind"].items()],
    )
    out.metric(
        "dsmirror_http_responses_total",
        "counter",
        "HTTP responses, by route kind and status code.",
        [
            ({"kind": kind, "code": code}, n)
            for kind, codes in served["responses"].items()
            for code, n in codes.items()
        ],
    )
    out.one("dsmirror_requests_in_flight", "gauge", "Requests being answered now.", doc["requests_in_flight"])
    out.metric(
        "dsmirror_upstream_bytes_total",
        "counter",
        "Bytes the pull-through fetched from upstream, by source.",
        [({"source": source}, n) for source, n in sorted(doc["upstream"]["by_source"].items())],
    )
    out.one(
        "dsmirror_saved_bytes", "gauge", "Bytes served that did not come from upstream.", doc["saved_bytes"]
    )
    pulls = doc["pulls"]
    out.one("dsmirror_pulls_active", "gauge", "Pull-through jobs queued or running.", pulls["active"])
    out.metric(
        "dsmirror_pulls_finished_total",
        "counter",
        "Pull-through jobs ended, by result.",
        [({"result": result}, pulls[result]) for result in ("done", "failed")],
    )
    seeding = doc["seeding"]
    out.one("dsmirror_bittorrent_seeding", "gauge", "1 while seeding over BitTorrent.", seeding is not None)
    out.one(
        "dsmirror_bittorrent_torrents",
        "gauge",
        "Torrents seeded.",
        len(seeding["torrents"]) if seeding else 0,
    )
    out.one(
        "dsmirror_bittorrent_peers",
        "gauge",
        "BitTorrent peers connected.",
        seeding["peers"] if seeding else 0,
    )
    out.one(
        "dsmirror_bittorrent_uploaded_bytes_total",
        "counter",
        "Bytes uploaded to BitTorrent peers since seeding started.",
        seeding["uploaded"] if seeding else 0,
    )
    out.one(
        "dsmirror_bittorrent_upload_bytes_per_second",
        "gauge",
        "Upload rate to BitTorrent peers.",
        seeding["upload_rate"] if seeding else 0,
    )
    out.metric(
        "dsmirror_errors_total",
        "counter",
        "Warnings and errors logged, by kind.",
        [({"kind": kind}, n) for kind, n in doc["errors"]["by_kind"].items()],
    )
    models = doc["models"]
    out.metric(
        "dsmirror_models",
        "gauge",
        "Models held, by format.",
        [({"format": f}, sum(m["format"] == f for m in models)) for f in _FORMATS],
    )
    out.metric(
        "dsmirror_models_verified",
        "gauge",
        "Models held whose every file dsmirror checked, by format.",
        [({"format": f}, sum(m["format"] == f and m["verified"] for m in models)) for f in _FORMATS],
    )
    out.metric(
        "dsmirror_model_bytes",
        "gauge",
        "Bytes of the models held, by format.",
        [({"format": f}, sum(m["size"] for m in models if m["format"] == f)) for f in _FORMATS],
    )
    out.one("dsmirror_files_served", "gauge", "Files the index serves.", doc["files"])
    return "\n".join(out.lines) + "\n"
