"""Coverage-guided fuzzing of the envelope decoder with atheris (libFuzzer), in a child
process so libFuzzer's exit does not end the test run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fuzz.envelope_target import SEEDS

RUNS = int(os.environ.get("NATSGATE_ATHERIS_RUNS", "100000"))


@pytest.mark.slow
def test_atheris_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.envelope_target",
            f"-runs={RUNS}",
            "-max_len=512",
            "-seed=20261125",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"Done {RUNS} runs" in r.stderr, r.stderr[-2000:]
