"""Preprocessing travels with the model: statistics from the training split only, stored in config.json, the
manifest and the ONNX metadata, and applied inside the exported graph, so an application feeds raw CSV rows or raw
0-255 pixels and gets the training pipeline's prediction. Also the data people have: image folders and CSV column
ranges."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from dslc_runtime import Model
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from dslc.build import load_generated
from dslc.cli import main
from dslc.data import sets
from dslc.errors import DslcError


def dslc(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def trained(folder: Path, spec_text: str, *args: str) -> Path:
    """`dslc train` of `spec_text` (as folder/s.model) into folder/run; the run folder."""
    spec = folder / "s.model"
    spec.write_text(spec_text)
    code, output = dslc("train", str(spec), "--out", str(folder / "run"), "--quiet", *args)
    assert code == 0, output
    return folder / "run"


def pipeline(run: Path, model: str, *inputs: torch.Tensor) -> torch.Tensor:
    """What the training pipeline's model (the run's code and weights) computes on inputs the data set made."""
    net = load_generated(run / "s.py").MODELS[model]()
    net.load_state_dict(load_file(run / f"{model}.safetensors"))
    with torch.no_grad():
        return net.eval()(*inputs)


# ---------------------------------------------------------------- CSV: raw rows in, the pipeline's prediction out

CSV_SPEC = """
model net {
    input features: float32[batch, 3]
    output logits = features -> Linear(8) -> ReLU -> Linear(2)
}
train {
    data = csv("d.csv", features="x0:x2", label="y", validation=0.25)
    loss = cross_entropy(logits, label)
    epochs = 2
}
"""


def write_csv(path: Path, n: int = 80) -> np.ndarray:
    """Columns on very different scales (a model fed raw values would need the statistics)."""
    rng = np.random.default_rng(0)
    x = rng.normal([100.0, -5.0, 0.01], [30.0, 2.0, 0.002], size=(n, 3))
    y = (x[:, 0] / 30 + x[:, 1] / 2 > 100 / 30 - 5 / 2).astype(int)
    lines = [
        "id,x0,x1,x2,y",
        *(f"{i},{float(a)!r},{float(b)!r},{float(c)!r},{t}" for i, ((a, b, c), t) in enumerate(zip(x, y))),
    ]
    path.write_text("\n".join(lines) + "\n")
    return x


def test_a_csv_model_takes_raw_rows_and_gives_the_pipelines_prediction(tmp_path):
    x = write_csv(tmp_path / "d.csv")
    run = trained(tmp_path, CSV_SPEC)
    options = dict(path="d.csv", features=("x0:x2",), label="y", target=None, validation=0.25)
    data = sets.load("csv", tmp_path, 0, standardize=True, **options)
    raw = sets.load("csv", tmp_path, 0, standardize=False, **options)  # the same split, unstandardised
    # the statistics are the training split's, not the whole file's
    transform = data.preprocess["features"]
    np.testing.assert_allclose(transform["subtract"], raw.train["features"].double().mean(0), rtol=1e-6)
    np.testing.assert_allclose(transform["divide"], raw.train["features"].double().std(0, correction=0), rtol=1e-6)
    assert not np.allclose(transform["subtract"], x.mean(0), rtol=1e-6)
    # stored in config.json, the manifest and the ONNX metadata
    assert json.loads((run / "config.json").read_text())["preprocess"]["features"]["subtract"] == transform["subtract"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"][0]["preprocess"]["features"]["divide"] == transform["divide"]
    meta = {p.key: p.value for p in onnx.load(run / "net.onnx").metadata_props}
    assert json.loads(meta["dslc.preprocess"])["features"]["subtract"] == transform["subtract"]
    # an application feeds the raw rows of the validation split
    expected = pipeline(run, "net", data.val["features"]).numpy()
    got = Model.load(run)(features=raw.val["features"].numpy())["logits"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    # without the transform the graph would be fed standardised values: raw ones give other logits
    assert not np.allclose(pipeline(run, "net", raw.val["features"]).numpy(), expected, atol=1e-3)


def test_without_standardize_nothing_is_prepended(tmp_path):
    write_csv(tmp_path / "d.csv")
    run = trained(tmp_path, CSV_SPEC.replace("validation=0.25", "validation=0.25, standardize=false"))
    assert "preprocess" not in json.loads((run / "config.json").read_text())
    assert "preprocess" not in json.loads((run / "manifest.json").read_text())["models"][0]
    assert [n.op_type for n in onnx.load(run / "net.onnx").graph.node][:1] != ["Sub"]


# ---------------------------------------------------------------- CSV column ranges and globs


def check(folder: Path, features: str, header: str) -> tuple[int, str]:
    row = ",".join("1" for _ in header.split(","))
    (folder / "d.csv").write_text(header + "\n" + f"{row}\n" * 5)  # 5 rows: 1 to validate, 4 to train
    width = 24
    (folder / "s.model").write_text(
        f"model m {{ input features: float32[batch, {width}]  output y = features -> Linear(1) }}\n"
        f'train {{ data = csv("d.csv", features={features}, target="y")  loss = mse(y, target) }}\n'
    )
    return dslc("check", str(folder / "s.model"))


WINDOW = ",".join(["when", *(f"t{i}" for i in range(24)), "y"])


@pytest.mark.parametrize("features", ['"t0:t23"', '"t*"', '["t0:t11", "t1[2-9]", "t2?"]'])
def test_feature_columns_by_range_or_glob(tmp_path, features):
    code, output = check(tmp_path, features, WINDOW)
    assert code == 0, output


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (
            '"t0:t22"',
            "the data set's 'features' is float32[batch, 23] but model 'm' input 'features' expects float32[batch, 24]",
        ),  # 23 columns for a model of 24: the shapes disagree
        ('"t23:t0"', "column range 't23:t0' is empty: 't23' comes after 't0'"),
        ('"u*"', "no column matches 'u*'"),
        ('"t0:t99"', "no column 't99'"),
        ('["t0:t23", "t5"]', "features select column 't5' twice"),
    ],
)
def test_bad_feature_selections_are_located_errors(tmp_path, features, message):
    code, output = check(tmp_path, features, WINDOW)
    assert code == 1 and message in output, output
    assert f"{tmp_path / 's.model'}:2:" in output


def test_a_field_fed_to_a_model_implicitly_is_reported_at_the_data_set(tmp_path):
    """`loss = mse(y, target)` runs the model on the field `features`: a width mismatch is the data set's."""
    code, output = check(tmp_path, '"t0:t22"', WINDOW)
    assert code == 1 and f"{tmp_path / 's.model'}:2:16: error: the data set's 'features' is" in output, output


# ---------------------------------------------------------------- image folders and raw pixels

IMAGE_SPEC = """
model net {
    input image: float32[batch, 1, 8, 8]
    output logits = image -> Conv2d(4, kernel=3, padding="same") -> ReLU -> Flatten -> Linear(3)
}
train {
    data = image_folder("pictures", size=8, grayscale=true, raw_pixels=true, validation=0.25)
    loss = cross_entropy(logits, label)
    epochs = 2
    batch_size = 8
}
"""
CLASSES = ["one", "two", "zero"]  # sorted folder names: the class ids


def write_pictures(root: Path, per_class: int = 8) -> None:
    """PNGs of the embedded digits 0, 1, 2 (8x8, 0-255), in class folders named by word."""
    digits = load_digits()
    words = {0: "zero", 1: "one", 2: "two"}
    for digit, word in words.items():
        (root / word).mkdir(parents=True)
        images = digits.images[digits.target == digit][:per_class]
        for i, image in enumerate(images):
            Image.fromarray((image * 255 / 16).round().astype(np.uint8), "L").save(root / word / f"{i}.png")
    (root / "one" / "notes.txt").write_text("not an image: skipped")


def test_an_image_folder_trains_and_its_labels_reach_the_onnx_metadata(tmp_path):
    write_pictures(tmp_path / "pictures")
    run = trained(tmp_path, IMAGE_SPEC)
    meta = {p.key: p.value for p in onnx.load(run / "net.onnx").metadata_props}
    assert json.loads(meta["dslc.labels"]) == CLASSES
    assert json.loads((run / "manifest.json").read_text())["models"][0]["labels"] == CLASSES
    assert json.loads(meta["dslc.preprocess"])["image"]["divide"] == 255.0
    # an application reads a PNG and feeds its 0-255 values
    png = tmp_path / "pictures" / "two" / "3.png"
    pixels = np.asarray(Image.open(png), dtype=np.float32)[None, None]
    model = Model.load(run)
    got = model(image=pixels)["logits"]
    expected = pipeline(run, "net", torch.from_numpy(pixels / 255.0)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert model.labels == CLASSES


def test_image_folder_standardize_uses_the_training_split(tmp_path):
    write_pictures(tmp_path / "pictures")
    data = sets.load(
        "image_folder",
        tmp_path,
        0,
        path="pictures",
        size=8,
        grayscale=False,
        raw_pixels=True,
        standardize=True,
        validation=0.25,
    )
    assert data.train["image"].shape == (18, 3, 8, 8) and data.val["image"].shape == (6, 3, 8, 8)
    assert data.labels == CLASSES
    assert abs(float(data.train["image"].mean())) < 1e-5  # standardised with the training split's statistics
    t = data.preprocess["image"]
    assert np.shape(t["subtract"]) == (3, 1, 1) and np.shape(t["divide"]) == (3, 1, 1)


def test_digits_with_raw_pixels_exports_a_graph_fed_0_to_255(tmp_path):
    spec = IMAGE_SPEC.replace(
        'image_folder("pictures", size=8, grayscale=true, raw_pixels=true, validation=0.25)',
        "digits(raw_pixels=true)",
    ).replace("Linear(3)", "Linear(10)")
    run = trained(tmp_path, spec, "--epochs", "1")
    data = sets.load("digits", tmp_path, 0, image_size=8, flatten=False, raw_pixels=True, validation=0.2)
    images = data.val["image"][:16]
    got = Model.load(run)(image=(images * 255).numpy())["logits"]
    np.testing.assert_allclose(got, pipeline(run, "net", images).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "data folder 'pictures' not found"),
        (lambda root: root.write_text("x"), "data folder 'pictures' is not a folder"),
        (lambda root: root.mkdir(), "pictures: no class folders"),
        (lambda root: (root / "cats").mkdir(parents=True), "class folder 'cats' holds no PNG or JPEG image"),
        (lambda root: _write(root / "cats" / "a.png", b"not a png"), "a.png: cannot read the image"),
        (lambda root: _write(root / "cats" / "a.gif", b"GIF89a"), "class folder 'cats' holds no PNG or JPEG image"),
        (lambda root: _link(root / "cats", "/etc"), "a link out of the data folder"),
        (lambda root: _fifo(root / "cats" / "a.png"), "a.png: not a regular file"),
    ],
)
def test_bad_image_folders_are_located_errors(tmp_path, make, message):
    make(tmp_path / "pictures")
    (tmp_path / "s.model").write_text(IMAGE_SPEC)
    code, output = dslc("check", str(tmp_path / "s.model"))
    assert code == 1 and message in output, output
    assert f"{tmp_path / 's.model'}:7:12: error:" in output
    code, output = dslc("train", str(tmp_path / "s.model"), "--out", str(tmp_path / "run"))
    assert code == 1 and message in output, output


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(data)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True)
    path.symlink_to(target)


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True)
    os.mkfifo(path)


def test_the_loader_names_an_unreadable_image(tmp_path):
    write_pictures(tmp_path / "pictures")
    bad = tmp_path / "pictures" / "zero" / "5.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DslcError, match="cannot read the image") as caught:
        sets.load(
            "image_folder",
            tmp_path,
            0,
            path="pictures",
            size=8,
            grayscale=True,
            raw_pixels=False,
            standardize=False,
            validation=0.25,
        )
    assert str(bad) in caught.value.render()
