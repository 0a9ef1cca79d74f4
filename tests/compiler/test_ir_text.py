"""`dslc check --ir`: the checked IR as text, compared line for line (FileCheck style)."""

from __future__ import annotations

import subprocess
import sys

from dslc.checker import check_file
from dslc.ir_text import dump
from tests.conftest import ROOT, SPECS

EXPECTED = """\
program t (sha256 {sha})

module Mlp = block Mlp(hidden=16)  # line 1
  param d: int = size 1 of input 0
  param hidden: int
  input x: float32[batch, 4 <d>]
  layer fc1: Linear(in_features=4 <d>, out_features=16 <hidden>, bias=True)  # 80 parameters
  layer fc2: Linear(in_features=16 <hidden>, out_features=4 <d>, bias=True)  # 68 parameters
  y = Linear[fc1](x) : float32[batch, 16 <hidden>]  # line 3
  y = ReLU(y) : float32[batch, 16 <hidden>]  # line 3
  y = Linear[fc2](y) : float32[batch, 4 <d>]  # line 3
  output y: float32[batch, 4 <d>]

module M = model m  # line 5
  input x: float32[batch, 4]
  layer mlp1: Mlp(d=4, hidden=16)  # 148 parameters
  layer mlp2: Mlp(d=4, hidden=16)  # 148 parameters
  h = mlp1(x) : float32[batch, 4]  # line 7
  h = mlp2(h) : float32[batch, 4]  # line 7
  output h: float32[batch, 4]

class Mlp (block): Mlp
class M (model): M
"""


def test_ir_dump_shows_types_and_traced_values(write_spec):
    path = write_spec("""
        block Mlp(hidden: int) {
            input x: float32[batch, d]
            output y = x -> Linear(hidden) -> ReLU -> Linear(d)
        }
        model m {
            input x: float32[batch, 4]
            output h = x -> Mlp(16) -> Mlp(16)
        }
    """)
    program = check_file(path)
    assert dump(program) == EXPECTED.format(sha=program.sha256[:16])


def test_ir_dump_of_every_spec_is_stable():
    for spec in sorted(SPECS.glob("*.model")):
        assert dump(check_file(spec)) == dump(check_file(spec))


def test_check_ir_prints_it():
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "check", str(SPECS / "resnet18.model"), "--ir"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "module BasicBlock2 = block BasicBlock(planes=128, stride=2)" in result.stdout
    assert "if [stride != 1 or channels != planes] takes arm 0:" in result.stdout
    assert "class BasicBlock (block): BasicBlock, BasicBlock2, BasicBlock3" in result.stdout
