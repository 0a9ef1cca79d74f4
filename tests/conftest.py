"""Shared fixtures: paths and a helper to write spec files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
# Settings that make a large shipped spec quick to build where a test only needs it to run (vgg: 138M parameters
# at its defaults, 21M with these).
SMALL_SETTINGS = {"vgg": ["image_size=32", "hidden=256"]}


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(text, name="t.model") -> Path of a spec file holding the dedented text."""

    def write(text: str, name: str = "t.model") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
