"""The test material: real-photo tests skip with a reason in a plain clone and fail under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_TEST = "tests/test_images.py::test_find_unreadable_names_exactly_the_broken_files"


def _run_without_photos(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARCLI_TEST_DATA": str(tmp_path / "nowhere"), "CI": ci}
    command = [sys.executable, "-m", "pytest", REAL_DATA_TEST, "-q", "-rs", "-p", "no:cacheprovider"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("ci", "code", "outcome"), [("", 0, "1 skipped"), ("true", 1, "1 failed")])
def test_real_photo_tests_skip_in_a_plain_clone_and_fail_in_ci(tmp_path, ci, code, outcome):
    run = _run_without_photos(tmp_path, ci)
    assert run.returncode == code, run.stdout
    assert outcome in run.stdout
    assert "nowhere/data/stanford_cars is missing" in run.stdout
    assert "CARCLI_TEST_DATA" in run.stdout
