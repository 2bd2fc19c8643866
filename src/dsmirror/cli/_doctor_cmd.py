"""``dsmirror doctor [REF]``: check the network path to every mirror and this machine; give advice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsmirror._core.units import format_bytes, format_rate, parse_size
from dsmirror.cli._app import MirrorsOpt, NoDefaultCatalogOpt, app, console, load_catalog_from_options
from dsmirror.cli._console import safe_text, styled

if TYPE_CHECKING:
    from rich.text import Text

    from dsmirror._doctor import DoctorReport, MirrorCheck


@app.command("doctor")
def doctor_cmd(
    ref: Annotated[
        str | None,
        typer.Argument(help="Optional: what you want to pull (manifest, URL, hf://, ollama://, alias)."),
    ] = None,
    mirrors: MirrorsOpt = None,
    no_default_catalog: NoDefaultCatalogOpt = False,
    dest: Annotated[
        Path | None, typer.Option("--dest", "-d", help="Where the model would go (for the disk check).")
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="BitTorrent listen address to check (default 0.0.0.0:6881)."),
    ] = None,
    sample: Annotated[
        str, typer.Option("--sample", help="Throughput sample size per mirror (bounded by --sample-seconds).")
    ] = "4MiB",
    sample_seconds: Annotated[float, typer.Option("--sample-seconds", min=0.1, max=30.0)] = 2.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, max=300.0, help="Bound on all mirror checks together (s).")
    ] = 25.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
) -> None:
    """Diagnose downloads from here: DNS, TCP, TLS, HTTP, speed per mirror; proxy, clock, disk, stores."""
    from dsmirror._doctor import DoctorConfig, run_doctor  # httpx, ssl, statistics...: only for this command

    settings, catalog = load_catalog_from_options(mirrors, no_default_catalog)
    cfg = DoctorConfig(sample_bytes=parse_size(sample), sample_seconds=sample_seconds, deadline=timeout)
    report = run_doctor(catalog, settings, ref=ref, dest=dest, config=cfg, listen=listen)
    if json_out:
        print(json.dumps(report.to_dict(), indent=1, default=str))
        return
    render_report(report)


def _ms(v: float | None) -> str:
    return f"{v * 1000:.0f} ms" if v is not None else "-"


_STYLE = {"ok": "green", "slow": "yellow", "skipped": "dim"}


def _row(c: MirrorCheck) -> list[str | Text]:
    http = str(c.http_status) if c.http_status is not None else "-"
    if c.redirect:
        http += f" -> {c.redirect}"
    note = c.error or (f"via proxy {c.via_proxy}" if c.via_proxy else "")
    return [
        c.name + (" (official)" if c.official else ""),
        f"{c.kind}/{c.region}",
        f"{c.host}:{c.port}",
        _ms(c.dns),
        _ms(c.connect),
        (_ms(c.tls) + (f" {c.tls_version}" if c.tls_version else "")) if c.url.startswith("https") else "-",
        http,
        _ms(c.ttfb),
        format_rate(c.rate) if c.rate else "-",
        styled(c.status, _STYLE.get(c.status, "red")),
        note,
    ]


def render_report(r: DoctorReport) -> None:
    from rich.table import Table
    from rich.text import Text

    title = "mirrors" + (f" for {r.ref}" if r.ref else "")
    t = Table(title=title, title_justify="left")
    cols = ("mirror", "kind/region", "address", "DNS", "connect", "TLS", "HTTP", "first byte", "speed")
    for col in (*cols, "status", "note"):
        t.add_column(col, justify="right" if col in ("DNS", "connect", "first byte", "speed") else "left")
    for c in r.mirrors:
        t.add_row(*_row(c))
    console.print(t)
    local = Table(title="this machine", title_justify="left", show_header=False)
    local.add_column("check")
    local.add_column("result")
    proxies = ", ".join(f"{k}={v}" for k, v in r.proxies.items()) or "none set"
    local.add_row("proxy variables", proxies)
    local.add_row(
        "clock skew",
        f"{r.clock_skew:+.0f} s against the servers' Date headers" if r.clock_skew is not None else "unknown",
    )
    if r.disk is not None:
        need = f" (model: {format_bytes(r.disk.needed)})" if r.disk.needed is not None else ""
        local.add_row("free disk", f"{format_bytes(r.disk.free)} in {r.disk.path}{need}")
    for s in r.stores:
        state = styled("writable", "") if s.writable else styled("not writable", "red")
        detail = f" ({s.detail})" if s.detail else ""
        local.add_row(s.what, Text.assemble(safe_text(f"{s.path}: "), state, safe_text(detail)))
    if r.torrent is not None:
        tt = r.torrent
        ok = tt.tcp_ok and tt.udp_ok
        port = styled("can be bound", "") if ok else styled("cannot be bound", "red")
        local.add_row(
            "BitTorrent",
            Text.assemble(
                safe_text(f"listen {tt.listen}: "),
                port,
                safe_text(f" ({tt.detail})" if not ok else ""),
                f"; LSD {'on' if tt.lsd else 'off'}, DHT {'on' if tt.dht else 'off'}",
            ),
        )
    console.print(local)
    for note in r.notes:
        console.print(styled("note:", "dim"), note, highlight=False)
    if r.advice:
        console.print(styled("advice", "bold"))
        for line in r.advice:
            console.print(f"  - {line}", highlight=False)
    else:
        console.print(styled("no problem found", "bold green"))
    console.print(styled(f"checked in {r.seconds:.1f} s", "dim"))
