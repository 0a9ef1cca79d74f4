"""`augment = [...]` in the train section: checked by `dslc check` (located errors), applied to the training batches
only, never to evaluation batches or the exported model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dslc.cli import main
from dslc.training import augment
from dslc.training.runtime import Batches

MODEL = "model net {\n    input image: float32[batch, 1, 8, 8]\n    output logits = image -> Flatten -> Linear(10)\n}\n"


def spec(folder: Path, line: str, extra: str = "") -> Path:
    path = folder / "s.model"
    path.write_text(
        MODEL + f"train {{\n    data = digits()\n    loss = cross_entropy(logits, label)\n    {line}\n{extra}}}\n"
    )
    return path


def dslc(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def images(n: int = 6) -> torch.Tensor:
    return torch.arange(n * 2 * 5 * 7, dtype=torch.float32).reshape(n, 2, 5, 7) + 1


def test_random_crop_shifts_each_image_within_the_padding():
    torch.manual_seed(0)
    x = images()
    out = augment.random_crop(x, padding=2)
    assert out.shape == x.shape
    for original, cropped in zip(x, out):
        shifts = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(
                torch.nn.functional.pad(original, (2, 2, 2, 2))[:, 2 + dy : 2 + dy + 5, 2 + dx : 2 + dx + 7], cropped
            )
        ]
        assert len(shifts) == 1  # a shifted copy, zeros where it left the frame
    assert not torch.equal(out, x)  # 6 images: some shift away from (0, 0)


def test_random_flip_mirrors_with_its_probability():
    x = images()
    assert torch.equal(augment.random_flip(x, p=1.0, vertical=False), x.flip(-1))
    assert torch.equal(augment.random_flip(x, p=1.0, vertical=True), x.flip(-2))
    assert torch.equal(augment.random_flip(x, p=0.0, vertical=False), x)


def test_random_rotation_keeps_an_unrotated_image_and_turns_others():
    x = images()
    assert torch.allclose(augment.random_rotation(x, degrees=0.0), x, atol=1e-4)
    bar = torch.zeros(16, 1, 9, 9)
    bar[:, 0, 4, 4:8] = 1.0  # from the centre to the right: every rotation but 0 moves it
    torch.manual_seed(0)
    turned = augment.random_rotation(bar, degrees=90.0)
    moved = [not torch.allclose(t, b, atol=0.1) for t, b in zip(turned, bar)]
    assert sum(moved) >= 12, moved
    assert torch.allclose(turned.sum((1, 2, 3)), bar.sum((1, 2, 3)), rtol=0.3)  # turned, not lost


def test_noise_has_its_standard_deviation():
    torch.manual_seed(0)
    x = torch.zeros(200, 1, 10, 10)
    assert math.isclose(float(augment.noise(x, std=0.5).std()), 0.5, rel_tol=0.05)
    assert torch.equal(augment.noise(x, std=0.0), x)


def test_augmented_batches_change_the_fields_named_only():
    tensors = {"image": torch.zeros(8, 1, 4, 4), "label": torch.arange(8)}
    batches = Batches(tensors, 4, False, 0, 0, 1, torch.device("cpu"), 0)
    plan = [{"name": "noise", "field": "image", "std": 1.0}]
    out = list(augment.Augmented(batches, plan).epoch(0))
    assert len(out) == 2 and all(b["image"].abs().sum() > 0 for b in out)
    assert torch.equal(torch.cat([b["label"] for b in out]), tensors["label"])
    assert tensors["image"].abs().sum() == 0  # the data set itself is untouched


@pytest.mark.parametrize(
    ("line", "message", "hint"),
    [
        ("augment = [random_crp(image)]", "unknown augmentation 'random_crp'", "did you mean 'random_crop'"),
        ("augment = [random_crop(imag)]", "random_crop: 'imag' is not a field of the data set", "did you mean"),
        ("augment = [random_crop(label)]", "random_crop works on float images", None),
        ("augment = [noise(std=0.1)]", "noise names the dataset field it augments first", None),
        ("augment = [random_flip(image, p=2.0)]", "'p' must be", None),
        ("augment = [random_crop(image, pad=4)]", "random_crop", "did you mean 'padding'?"),
    ],
)
def test_bad_augmentations_are_located_errors(tmp_path, line, message, hint):
    code, output = dslc("check", str(spec(tmp_path, line)))
    assert code == 1 and message in output, output
    assert f"{tmp_path / 's.model'}:8:" in output, output
    assert (hint in output) if hint else True, output


def test_training_batches_are_augmented_and_evaluation_batches_are_not(tmp_path):
    """Noise of std 1000 on the training images only, with a learning rate of 0: the training loss is huge, the
    validation loss that of the untouched initial model on clean digits (about ln 10)."""
    line = (
        "augment = [random_crop(image, padding=1), random_flip(image), random_rotation(image), noise(image, std=1000)]"
    )
    path = spec(tmp_path, line, "    optimizer = sgd(lr=0.0)\n    epochs = 1\n")
    assert dslc("check", str(path))[0] == 0
    code, output = dslc("train", str(path), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, output
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_loss"] < 3.0 and record["train_loss"] > 30 * record["val_loss"], record
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [a["name"] for a in config["train"]["augment"]] == ["random_crop", "random_flip", "random_rotation", "noise"]
