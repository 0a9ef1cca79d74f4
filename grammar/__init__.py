"""The dslc grammar, shipped as package data (`dslc.grammar`)."""

from pathlib import Path

GRAMMAR_PATH = Path(__file__).with_name("dslc.lark")
