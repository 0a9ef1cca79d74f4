"""The generated reference is current, its anchors exist, and the spec examples in docs/ compile."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from dslc import docgen
from dslc.checker import check_file
from tests.conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_reference_is_current():
    assert docgen.REFERENCE.read_text(encoding="utf-8") == docgen.render(), (
        "docs/reference.md is stale: run `python -m dslc.docgen`"
    )


def test_anchors_are_unique_and_links_resolve():
    text = docgen.REFERENCE.read_text(encoding="utf-8")
    ids = re.findall(r'<a id="([^"]+)"></a>', text)
    assert not [a for a, n in Counter(ids).items() if n > 1]
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in ids, f"broken link #{link}"


def test_every_op_is_documented():
    anchors = docgen.anchors(docgen.REFERENCE.read_text(encoding="utf-8"))
    for op in docgen.unique_ops():
        assert docgen.op_anchor(op.name) in anchors


def test_diagnostic_sections_exist():
    """Every `section="..."` a diagnostic names is an anchor of the reference."""
    anchors = docgen.anchors(docgen.REFERENCE.read_text(encoding="utf-8"))
    used = set()
    for path in (ROOT / "dslc").rglob("*.py"):
        used |= set(re.findall(r'section="([a-z0-9_-]+)"', path.read_text(encoding="utf-8")))
    assert used - anchors == set()


def _spec_blocks():
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```dslc\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)):
            yield pytest.param(block, id=f"{doc.stem}-{i}")


@pytest.mark.parametrize("source", list(_spec_blocks()))
def test_doc_examples_check(source, tmp_path: Path):
    (tmp_path / "corpus.txt").write_text("the text a fine-tuning example reads\n" * 20, encoding="utf-8")
    spec = tmp_path / "example.model"
    spec.write_text(source, encoding="utf-8")
    assert check_file(spec).exported


def test_tutorial_spec_is_the_cnn_template():
    from dslc.templates import template_text

    tutorial = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    first = re.search(r"```dslc\n(.*?)```", tutorial, re.S).group(1)
    assert first == template_text("cnn", "digits")
