"""Summarise a py-spy speedscope profile: where the samples' time went, by function (self
and inclusive) and by package. ``python -m bench.profile FILE.speedscope.json``.

py-spy samples only threads that are running Python (not idle in epoll), so percentages are
of the time the gateway was busy, not of wall time.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PACKAGES = (
    ("/natsgate/", "natsgate"),
    ("/aiohttp/", "aiohttp"),
    ("/nats/", "nats-py"),
    ("/msgspec/", "msgspec"),
    ("/uvloop/", "uvloop"),
    ("/asyncio/", "asyncio"),
    ("/prometheus_client/", "prometheus_client"),
)


def package(file: str) -> str:
    for needle, name in PACKAGES:
        if needle in file:
            return name
    return "other" if file else "native"


def fn_key(frame: dict[str, Any]) -> str:
    """``function (path/inside/its/package.py)``: the line folded away."""
    file = frame.get("file") or ""
    for needle in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if needle in file:
            file = file.split(needle, 1)[1]
            break
    return f"{frame.get('name', '?')} ({file})"


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    frames = doc["shared"]["frames"]
    self_t: Counter[int] = Counter()
    incl_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    total = 0
    for prof in doc["profiles"]:
        for stack, w in zip(prof["samples"], prof["weights"], strict=True):
            if not stack:
                continue
            total += w
            leaf = stack[-1]
            self_t[leaf] += w
            self_pkg[package(frames[leaf].get("file") or "")] += w
            # inclusive by function name+file (line differs per sample; fold it away)
            for key in {fn_key(frames[i]) for i in stack}:
                incl_fn[key] += w
    self_fn: Counter[str] = Counter()
    for i, w in self_t.items():
        self_fn[fn_key(frames[i])] += w

    def pct(c: Counter[str]) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(top)] if total else []

    return {
        "file": str(path),
        "busy_seconds": round(total, 2),
        "samples": sum(len(p["samples"]) for p in doc["profiles"]),
        "top_self": pct(self_fn),
        "top_inclusive": pct(incl_fn),
        "self_by_package": pct(self_pkg),
    }


def main() -> int:
    s = summarize(Path(sys.argv[1]))
    print(f"{s['samples']} samples, {s['busy_seconds']} s busy")
    for title, key in (
        ("self, by package", "self_by_package"),
        ("self", "top_self"),
        ("inclusive", "top_inclusive"),
    ):
        print(f"\n{title}:")
        for name, p in s[key]:
            print(f"  {p:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
