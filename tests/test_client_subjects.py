"""The browser library's ``covers`` is the gateway's ``covers``, case by case.

A page predicts with ``covers``/``coveredByAny`` (client/natsgate/subjects.js) what the
gateway decides with ``natsgate.subjects.covers``. The shared table
(client/test/covers-cases.json, also run by the node tests) is held to the Python rule, then
both rules are run over every pair of valid patterns of up to three tokens drawn from a
small alphabet that includes the private ``_INBOX`` and ``$`` first tokens.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

from natsgate.subjects import covered_by_any, covers

ROOT = Path(__file__).parents[1]
ENTRY = ROOT / "client" / "natsgate.js"
CASES = ROOT / "client" / "test" / "covers-cases.json"


def js(script: str, stdin: str) -> object:
    """Run ``script`` in node with the library's entry module imported as ``m``."""
    node = shutil.which("node")
    assert node, "node is needed for the browser library's tests"
    prelude = (
        f"const m = await import({json.dumps(ENTRY.as_uri())});"
        "let input = ''; for await (const chunk of process.stdin) input += chunk;"
        "const data = JSON.parse(input);"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", prelude + script],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)


def table() -> list[tuple[str, str, bool]]:
    return [(g, p, bool(want)) for g, p, want in json.loads(CASES.read_text())["cases"]]


def patterns() -> list[str]:
    """Every valid pattern of one to three tokens over the alphabet (``>`` only last)."""
    alphabet = ["a", "b", "*", ">", "_INBOX", "$KV"]
    out = []
    for n in (1, 2, 3):
        for tokens in itertools.product(alphabet, repeat=n):
            if ">" not in tokens[:-1]:
                out.append(".".join(tokens))
    return out


def test_the_shared_table_is_the_gateway_rule() -> None:
    cases = table()
    assert len(cases) > 40
    wrong = [(g, p, want) for g, p, want in cases if covers(g, p) is not want]
    assert not wrong, f"covers-cases.json disagrees with natsgate.subjects.covers: {wrong}"


def test_browser_covers_is_the_gateway_covers() -> None:
    pairs = [[g, p] for g, p, _ in table()]
    pairs += [[g, p] for g in patterns() for p in patterns()]
    assert len(pairs) > 10_000
    decided = js(
        "console.log(JSON.stringify(data.map(([g, p]) => m.covers(g, p))));", json.dumps(pairs)
    )
    assert isinstance(decided, list) and len(decided) == len(pairs)
    differ = [
        (g, p, says)
        for (g, p), says in zip(pairs, decided, strict=True)
        if covers(g, p) is not says
    ]
    assert not differ, f"covers(grant, pattern): JS differs from Python on {differ[:10]}"


def test_browser_covered_by_any_is_the_gateway_rule() -> None:
    lists: list[list[str]] = [
        [],
        [">"],
        ["chat.*", "news.>"],
        [">", "_INBOX.>"],
        ["*.>", "$KV.todos.>"],
    ]
    subjects = ["chat.room", "chat.>", "news.x.y", "_INBOX.x", "$KV.todos.k", "$KV.other.k"]
    cases = [(grants, s) for grants in lists for s in subjects]
    decided = js(
        "console.log(JSON.stringify(data.map(([g, s]) => m.coveredByAny(g, s))));",
        json.dumps(cases),
    )
    assert decided == [covered_by_any(grants, s) for grants, s in cases]
