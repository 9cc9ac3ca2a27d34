"""The shape of the house (docs/architecture.md), checked: no import circles in
``src/natsgate`` (imports under ``TYPE_CHECKING`` count too: they are coupling all the
same), every client op in the one table of handlers, pure modules free of I/O, and no
module grown past the size at which it should be split by concern."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from natsgate import ops
from natsgate import protocol as p

SRC = Path(__file__).resolve().parents[1] / "src" / "natsgate"
MAX_LINES = 450
# Pure logic: no sockets, no NATS, no event loop (tested without any).
PURE = (
    "subjects",
    "protocol",
    "frames",
    "capabilities",
    "kvmsg",
    "members",
    "addresses",
    "handshake",
    "wsframe",
    "errors",
)
IO_MODULES = ("asyncio", "socket", "nats", "aiohttp", "uvloop")


def _modules(root: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def import_cycles(root: Path = SRC) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    known = _modules(root)
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_circles() -> None:
    assert import_cycles() == []


def test_the_checker_finds_a_circle(tmp_path: Path) -> None:
    """So that the test above can fail: the same walk over a tree with a circle in it."""
    pkg = tmp_path / "natsgate"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
    )
    assert import_cycles(pkg) == [["natsgate.a", "natsgate.b"]]


def test_every_client_op_has_one_handler() -> None:
    assert set(ops.HANDLERS) == set(get_args(p.ClientOp))


def test_no_module_outgrows_its_concern() -> None:
    sizes = {m: len(path.read_text().splitlines()) for m, path in _modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_pure_modules_do_no_io() -> None:
    known = _modules()
    for name in PURE:
        tree = ast.parse(known[f"natsgate.{name}"].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & set(IO_MODULES), (name, roots)


def test_no_wait_for() -> None:
    """``asyncio.wait_for`` on Python 3.11 drops a cancellation that arrives in the turn
    its inner awaitable finishes; a loop around it then outlives its connection (a reader's
    pump kept the gateway's stop() waiting for ever). ``asyncio.timeout`` does not."""
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                found.append((name, node.lineno))
    assert found == []
