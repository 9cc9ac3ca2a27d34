"""What ``pip install natsgate`` and the container image get: the wheel carries the
browser library and the demo where ``natsgate.server.web_dir()`` looks for them
(``<purelib>/natsgate_web``), and deploy/Containerfile names files that exist. The image
itself is built and run by hand (docs/deploy.md, "Container": no engine in CI)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_web_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("natsgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "natsgate_web/natsgate.js" in names
    assert "natsgate_web/demo/index.html" in names
    modules = {Path(n).name for n in names if n.startswith("natsgate_web/natsgate/")}
    assert modules == {p.name for p in (ROOT / "client" / "natsgate").glob("*.js")}
    assert "natsgate/server.py" in names and "natsgate/cli/__init__.py" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert (
        entry and "natsgate = natsgate.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
    )


def test_containerfile_names_what_exists() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    # the env file to pass is made from the example, which exists
    assert "cp deploy/natsgate.env.example natsgate.env" in text
    assert "--env-file natsgate.env" in text and "--env-file deploy/" not in text
    assert (ROOT / "deploy" / "natsgate.env.example").is_file()
    # the image checks web_dir() finds the wheel's files; none is copied by hand
    assert "web_dir()" in text and "natsgate_web" in text and "/web" not in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("src", "client", "demo", "pyproject.toml", "README.md", "deploy"):
        assert needed not in ignored
