"""Fuzzing the envelope decoder and what the gateway would send back (the properties are
in ``tests/fuzz/properties.py``): coverage-guided with atheris (libFuzzer), in a child
process so libFuzzer's exit does not end the test run, and a quick hypothesis pass over
random and damaged frames in every run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .fuzz.properties import SEEDS, check_frame

RUNS = int(os.environ.get("NATSGATE_ATHERIS_RUNS", "100000"))


@st.composite
def damaged_seeds(draw: st.DrawFn) -> bytes:
    """A seed with a few bytes replaced, inserted or cut: mostly still JSON-shaped."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(frame)))
        cut = draw(st.integers(0, 2))
        frame[i : i + cut] = draw(st.binary(max_size=3))
    return bytes(frame)


@given(st.one_of(st.binary(max_size=200), damaged_seeds(), st.sampled_from(SEEDS)))
@settings(max_examples=300)
def test_decoded_frames_and_replies_are_utf8_json(frame: bytes) -> None:
    check_frame(frame)


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
