"""The environment variables of ``natsgate serve --help``, read from the comments of
:class:`~natsgate.config.Config` (``field: type = default  # NAME: what it is``) and its
defaults, so that the list and the config cannot drift apart."""

from __future__ import annotations

import inspect
import re

from .. import config

_FIELD = re.compile(r"^\s+(\w+): [^#]*?#\s*(.+)$")
_NAMES = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9](?:\s*\+\s*[A-Z][A-Z0-9_]*[A-Z0-9])*")


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def for_terminal(text: str) -> str:
    """A comment written for the source, as a terminal shows it: reST literals
    (````iss````) in plain quotes, Python's ``None`` as "unset"."""
    text = re.sub(r"``([^`]+)``", r"'\1'", text)
    return re.sub(r"\bNone\b", "unset", text)


def names() -> list[str]:
    """Every variable the config reads, one name each (``NATS_JWT + NATS_NKEY``: two)."""
    return [n for label, _, _ in variables() for n in label.split(" + ")]


def variables() -> list[tuple[str, str, str]]:
    """(names, default, what it is) for each documented field, in the class's order; a
    second field under the same name (``STATIC_DIR=none``) adds to the first one's text."""
    try:
        source = inspect.getsource(config.Config)
    except (OSError, TypeError):  # no source shipped: no list rather than a wrong one
        return []
    defaults = config.Config()
    rows: dict[str, tuple[str, str, str]] = {}
    for line in source.splitlines():
        m = _FIELD.match(line)
        if not m:
            continue
        attr, comment = m.groups()
        names = _NAMES.match(comment)
        if names is None:
            continue
        label = re.sub(r"\s*\+\s*", " + ", names.group(0))
        text = comment[names.end() :].lstrip(" :;,")
        text = re.sub(r"^/\s*", "also ", text)
        key = label.split(" + ")[0]
        if key in rows:
            old = rows[key]
            rows[key] = (old[0], old[1], f"{old[2]}; {key}{for_terminal(comment[len(key) :])}")
            continue
        rows[key] = (label, _default(getattr(defaults, attr)), for_terminal(text))
    return list(rows.values())


def env_help() -> str:
    """The block printed under ``natsgate serve --help``."""
    rows = variables()
    if not rows:
        return ""
    width = max(len(n) for n, _, _ in rows) + 2
    dwidth = min(max(len(d) for _, d, _ in rows), 22) + 2
    lines = [
        "environment (also read from a .env file in the current folder); name, default, meaning:"
    ]
    for names, default, text in rows:
        lines.append(f"  {names:<{width}}{default:<{dwidth}}{text}".rstrip())
    return "\n".join(lines)
