"""`freeze = [...]` in a train section: the named submodules and parameters keep their values, the rest trains."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from dslc.cli import main
from tests.compiler.test_checker import errors_of

SPEC = """
const vocab = 40
const d = 16

block Body() {
    input tokens: int64[batch, time]
    output h = (tokens -> wte: Embedding(vocab, d)) + (positions(tokens, dim=1) -> wpe: Embedding(64, d))
}

model lm {
    input tokens: int64[batch, time]
    h = tokens -> transformer: Body() -> ln: LayerNorm
    output logits = h -> lm_head: Linear(vocab, bias=false)
}

train {
    data = sequences(task="sort", vocab=vocab, length=8, samples=200)
    tokens = shift_right(target, fill=1)
    loss = cross_entropy(logits, target)
    optimizer = adamw(lr=1e-2)
    freeze = FROZEN
    epochs = 1
    batch_size = 32
}
"""


def test_frozen_parameters_keep_their_values(tmp_path, write_spec):
    spec = write_spec(SPEC.replace("FROZEN", '["transformer.wte", "lm_head.weight"]'), "lm.model")
    for out, extra in (("initial", ["--epochs", "0"]), ("trained", [])):
        result = CliRunner().invoke(main, ["train", str(spec), "-o", str(tmp_path / out), "--quiet", *extra])
        assert result.exit_code == 0, result.output
    before = load_file(tmp_path / "initial" / "lm.safetensors")
    after = load_file(tmp_path / "trained" / "lm.safetensors")
    frozen = {"transformer.wte.weight", "lm_head.weight"}
    for key in before:
        assert before[key].equal(after[key]) == (key in frozen), key


@pytest.mark.parametrize(
    "frozen, message",
    [
        ('["transformer.wtx"]', "freeze: 'transformer.wtx' names no submodule or parameter of lm"),
        ('["transformer", "ln", "lm_head"]', "freeze leaves no parameter to train"),
        ('"transformer"', "freeze is a list of submodule names"),
    ],
)
def test_freeze_errors(write_spec, frozen, message):
    errors = errors_of(write_spec(SPEC.replace("FROZEN", frozen)))
    assert len(errors) == 1 and message in errors[0], errors


def test_freezing_a_tied_weight_freezes_it_under_both_names(tmp_path, write_spec):
    tied = SPEC.replace(
        "    output logits = h -> lm_head: Linear(vocab, bias=false)\n",
        "    output logits = h -> lm_head: Linear(vocab, bias=false)\n    tie lm_head.weight = transformer.wte.weight\n",
    ).replace("FROZEN", '["lm_head"]')
    spec = write_spec(tied, "lm.model")
    for out, extra in (("initial", ["--epochs", "0"]), ("trained", [])):
        result = CliRunner().invoke(main, ["train", str(spec), "-o", str(tmp_path / out), "--quiet", *extra])
        assert result.exit_code == 0, result.output
    before = load_file(tmp_path / "initial" / "lm.safetensors")
    after = load_file(tmp_path / "trained" / "lm.safetensors")
    assert before["transformer.wte.weight"].equal(after["transformer.wte.weight"])
    assert not before["transformer.wpe.weight"].equal(after["transformer.wpe.weight"])


def test_overlapping_freezes_count_once_and_typos_get_the_full_name(write_spec):
    from dslc.checker import check_file

    check_file(write_spec(SPEC.replace("FROZEN", '["transformer.wte", "transformer"]')))  # ln and lm_head train
    errors = errors_of(write_spec(SPEC.replace("FROZEN", '["transformer.wtee"]')))
    assert "did you mean 'transformer.wte'" in errors[0], errors


def test_a_checkpoint_that_does_not_fit_leaves_no_run_folder(tmp_path, write_spec):
    """--weights of another model: a located error, and the new run folder is not left half-written."""
    import torch
    from safetensors.torch import save_file

    spec = write_spec(SPEC.replace("FROZEN", '["transformer.wte"]'), "lm.model")
    save_file({"other.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    out = tmp_path / "run"
    args = ["train", str(spec), "-o", str(out), "--quiet", "--weights", str(tmp_path / "other.safetensors")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "--weights" in result.output
    assert not out.exists() and f"removed {out}: the run stopped before it saved anything" in result.output
