"""deploy/grafana/natsgate.json plots only metrics a real gateway's ``/metrics`` has, and
shows what an operator looks at first."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from .helpers import Gw

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "natsgate.json"
NAME = re.compile(r"\bnatsgate_[a-zA-Z0-9_]+")
# Grafana's own variables and PromQL words that are no metric names
NOT_METRICS = re.compile(r"\$__\w+|\$\w+")


def exposed(text: str) -> set[str]:
    """Every series name a scrape of this text can hold: the samples', and for metric
    families without a sample yet (a labelled counter nothing has counted), the names
    their type gives them (counters ``_total``, histograms ``_bucket``/``_sum``/``_count``)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            if kind == "counter":
                base = family.removesuffix("_total")
                names |= {f"{base}_total", f"{base}_created"}
            elif kind == "histogram":
                names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
            else:
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def queries(dash: dict[str, Any]) -> list[str]:
    out = []
    for panel in dash["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        out.append(query["query"] if isinstance(query, dict) else str(query))
    return out


async def test_every_plotted_metric_exists(gw: Gw) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        assert r.status == 200
        names = exposed(await r.text())
    dash = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for expr in queries(dash):
        found = set(NAME.findall(NOT_METRICS.sub("", expr)))
        assert found, f"a query that plots no natsgate metric: {expr}"
        used |= found
    assert used - names == set(), f"plotted but not in /metrics: {sorted(used - names)}"
    print(f"{len(used)} metric names plotted, {len(names)} exposed")


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = " ".join(queries(dash))
    for metric in (
        "natsgate_open_connections",  # connections
        "natsgate_envelopes_out_total",  # deliveries/s
        "natsgate_queued_bytes",  # queue bytes
        "natsgate_backpressure_closes_total",  # slow-client closes
        "natsgate_upgrades_refused_total",  # refusals by reason
        "natsgate_errors_total",
        "natsgate_nats_reconnects_total",  # NATS reconnects
    ):
        assert metric in exprs, metric
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:  # importable anywhere: the data source is chosen at import
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    # counters are plotted as rates or increases, never as their raw running totals
    for expr in queries(dash):
        for name in NAME.findall(expr):
            if name.endswith(("_total", "_bucket", "_count", "_sum")):
                assert re.search(rf"(rate|increase)\({name}\b", expr), expr
