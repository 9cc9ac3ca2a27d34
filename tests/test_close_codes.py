"""One close-code table for the gateway, the Python client and the browser library.

``natsgate.errors.CLOSE_INFO`` is the table. The Python client imports it; the browser
library cannot, so ``client/natsgate/errors.js`` spells it out in ``CLOSE_CODES``, one code
per line, and these tests read that literal and hold it to the Python table, word for word;
then node imports the library's entry module (``client/natsgate.js``) and the table and
``closeAction`` it exports are held to it at run time. docs/protocol.md's table is held to
it too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from natsgate import client as ng
from natsgate.errors import CLOSE_INFO, CloseAction, CloseCode, close_action

ROOT = Path(__file__).parents[1]
ENTRY = ROOT / "client" / "natsgate.js"
JS = ROOT / "client" / "natsgate" / "errors.js"  # the module that spells out CLOSE_CODES
PROTOCOL_MD = ROOT / "docs" / "protocol.md"

JS_TABLE = re.compile(r"^export const CLOSE_CODES = Object\.freeze\(\{\n(.*?)^\}\);$", re.S | re.M)
JS_ENTRY = re.compile(
    r'^  (?P<code>\d{4}): \{ meaning: "(?P<meaning>[^"\\]*)", action: "(?P<action>[a-z]+)" \},$'
)
MD_ROW = re.compile(r"^\| (?P<code>\d{4}) \| [^|]* \| `(?P<action>[a-z]+)`")


def js_table() -> dict[int, tuple[str, str]]:
    """``CLOSE_CODES`` of errors.js, the literal, as {code: (meaning, action)}."""
    found = JS_TABLE.search(JS.read_text())
    assert found, f"{JS}: `export const CLOSE_CODES = Object.freeze({{` ... `}});` not found"
    table: dict[int, tuple[str, str]] = {}
    for line in found[1].splitlines():
        entry = JS_ENTRY.match(line)
        assert entry, f"errors.js CLOSE_CODES: not one entry like the others: {line!r}"
        code = int(entry["code"])
        assert code not in table, f"errors.js CLOSE_CODES: {code} twice"
        table[code] = (entry["meaning"], entry["action"])
    return table


def python_table() -> dict[int, tuple[str, str]]:
    return {int(code): (info.meaning, info.action.value) for code, info in CLOSE_INFO.items()}


def test_every_close_code_has_an_entry() -> None:
    assert set(CLOSE_INFO) == set(CloseCode)
    assert all(info.meaning for info in CLOSE_INFO.values())


def test_browser_table_is_the_gateway_table() -> None:
    js, py = js_table(), python_table()
    assert sorted(js) == sorted(py), "codes differ between errors.js and errors.py"
    for code in py:
        assert js[code] == py[code], f"{code}: errors.js {js[code]}, errors.py {py[code]}"


def test_browser_library_decides_as_the_table_at_run_time() -> None:
    """Imported by node from the public entry, ``CLOSE_CODES`` is the table and
    ``closeAction`` (not just the literal) agrees for every code in the table and for codes
    outside it."""
    node = shutil.which("node")
    assert node, "node is needed for the browser library's tests"
    codes = sorted({*map(int, CloseCode), 1003, 1005, 1006, 1010, 1014, 1015, 3000, 4004, 4999})
    script = (
        f"const m = await import({json.dumps(ENTRY.as_uri())});"
        f"const codes = {json.dumps(codes)};"
        "const decided = Object.fromEntries(codes.map((c) => [c, m.closeAction(c)]));"
        "console.log(JSON.stringify({decided, table: m.CLOSE_CODES}));"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    result = json.loads(out)
    decided = {int(code): action for code, action in result["decided"].items()}
    assert decided == {code: close_action(code).value for code in codes}
    exported = {int(c): (e["meaning"], e["action"]) for c, e in result["table"].items()}
    assert exported == python_table()


def test_python_client_decides_as_the_table() -> None:
    for code, info in CLOSE_INFO.items():
        assert ng.close_action(int(code)) is info.action
        assert ng.CLOSE_INFO[code] is info
    assert ng.close_action(None) is CloseAction.BACKOFF  # dropped without a close frame


@given(st.integers(min_value=0, max_value=65535) | st.none())
def test_codes_outside_the_table_back_off(code: int | None) -> None:
    known = code is not None and code in set(CloseCode)
    expected = CLOSE_INFO[CloseCode(code)].action if known else CloseAction.BACKOFF
    assert close_action(code) is expected
    assert ng.close_action(code) is expected


def test_decisions() -> None:
    """The choices docs/protocol.md explains, spelled out."""
    assert close_action(CloseCode.NORMAL) is CloseAction.BACKOFF
    assert close_action(CloseCode.GOING_AWAY) is CloseAction.BACKOFF
    assert close_action(CloseCode.PROTOCOL_ERROR) is CloseAction.BACKOFF
    assert close_action(CloseCode.INVALID_DATA) is CloseAction.BACKOFF
    assert close_action(CloseCode.POLICY) is CloseAction.STOP
    assert close_action(CloseCode.TOO_BIG) is CloseAction.BACKOFF
    assert close_action(CloseCode.INTERNAL) is CloseAction.BACKOFF
    assert close_action(CloseCode.RESTART) is CloseAction.PROMPT
    assert close_action(CloseCode.TRY_AGAIN_LATER) is CloseAction.BACKOFF
    assert close_action(CloseCode.CLIENT_TIMEOUT) is CloseAction.BACKOFF
    assert close_action(CloseCode.UNAUTHORIZED) is CloseAction.AUTH
    assert close_action(CloseCode.NO_PONG) is CloseAction.BACKOFF
    assert close_action(CloseCode.ADMIN_DISCONNECT) is CloseAction.STOP
    assert not CLOSE_INFO[CloseCode.ADMIN_DISCONNECT].reconnect
    assert CLOSE_INFO[CloseCode.UNAUTHORIZED].reconnect  # with a new token


def test_protocol_md_lists_the_table() -> None:
    text = PROTOCOL_MD.read_text()
    rows = {int(m["code"]): m["action"] for m in map(MD_ROW.match, text.splitlines()) if m}
    assert rows == {code: action for code, (_, action) in python_table().items()}
