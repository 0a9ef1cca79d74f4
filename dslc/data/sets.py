"""Loads a data set (by its registry name) into memory as tensors, split into train/validation.

Every loader is deterministic for a given seed, so a resumed or multi-process run sees the same
examples. Problems with user data (missing file, unknown column, bad label) raise DslcError.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dslc.data import registry
from dslc.data.episodes import Episodes as Episodes  # the episodes data source, for training scripts
from dslc.data.registry import (
    DATASETS,
    check_class_ids,
    check_columns,
    csv_number,
    data_file,
    read_csv,
    select_columns,
    text_examples,
)
from dslc.errors import did_you_mean, error
from dslc.params import BindError


@dataclass
class Data:
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    labels: list[str] | None = None  # class names, when the data set has them
    vocab: list[str] | None = None  # token id -> text, stored with the model (ONNX dslc.vocab)
    info: dict[str, Any] = field(default_factory=dict)
    # field -> how the exported graph turns a raw input into what the model trained on: (raw - subtract) / divide
    # (dslc.training.preprocess); statistics come from the training split only
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check_labels(self, name: str, classes: int, ignore_index: int | None = None) -> None:
        """Class ids must lie in [0, classes): a clear message instead of a CUDA assert later."""
        for split, tensors in (("training", self.train), ("validation", self.val)):
            values = tensors.get(name)
            if values is None or values.numel() == 0:
                continue
            try:
                check_class_ids(f"{split} data", name, values.unique().tolist(), classes, ignore_index)
            except BindError as exc:
                raise error(None, str(exc), exc.hint) from None


def load(name: str, base: Path, seed: int, **options: Any) -> Data:
    if name not in DATASETS:
        raise error(None, f"unknown data set '{name}'", did_you_mean(name, DATASETS))
    validation = options.pop("validation")
    data = LOADERS[name](base=base, seed=seed, **options)
    arrays, extra = data if isinstance(data, tuple) else (data, {})
    tensors = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in arrays.items()}
    n = len(next(iter(tensors.values())))
    if any(len(t) != n for t in tensors.values()):
        sizes = ", ".join(f"{k}: {len(t)}" for k, t in tensors.items())
        raise error(None, f"{name}: fields have different numbers of examples ({sizes})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * validation))
    val_idx, train_idx = order[:n_val], order[n_val:]
    out = Data(
        {k: t[train_idx] for k, t in tensors.items()},
        {k: t[val_idx] for k, t in tensors.items()},
        extra.get("labels"),
        extra.get("vocab"),
    )
    if "build_vocab" in extra:  # text: the vocabulary comes from the training split only
        extra["build_vocab"](out, train_idx)
    for name, (scale, raw) in extra.get("scaled", {}).items():  # the loader divided raw values by `scale`
        out.preprocess[name] = {"subtract": 0.0, "divide": float(scale), "raw": raw}
    for name, (axes, raw) in extra.get("standardize", {}).items():
        out.preprocess[name] = standardize(out, name, axes, out.preprocess.get(name), raw)
    return out


def standardize(data: Data, name: str, axes: tuple[int, ...], scaled: dict[str, Any] | None, raw: str) -> dict:
    """Standardise field `name` of both splits with the mean and standard deviation of the training split over
    `axes` (the batch axis and, for images, the pixels of a channel); a constant column keeps its values. Returns
    the raw -> model input transform, composed with an earlier scaling `scaled` (raw pixels / 255)."""
    train = data.train[name].double()
    mean, std = train.mean(axes, keepdim=True), train.std(axes, keepdim=True, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    mean32, std32 = mean.float()[0], std.float()[0]  # the batch axis dropped: broadcast over examples
    data.train[name] = (data.train[name] - mean32) / std32
    data.val[name] = (data.val[name] - mean32) / std32
    scale = scaled["divide"] if scaled else 1.0
    return {"subtract": (mean32 * scale).tolist(), "divide": (std32 * scale).tolist(), "raw": raw}


# ---------------------------------------------------------------- built-in sets


def digits(base: Path, seed: int, image_size: int, flatten: bool, raw_pixels: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    images = images.clamp(0, 1).numpy()
    if flatten:
        images = images.reshape(len(images), -1)
    extra: dict[str, Any] = {"labels": [str(i) for i in range(10)]}
    if raw_pixels:  # [0, 1] stands for 0-255: the exported graph divides by 255
        extra["scaled"] = {"image": (255.0, "pixel values 0-255 (grey, 0 = background)")}
    return {"image": images, "label": d.target.astype(np.int64)}, extra


def image_folder(base: Path, seed: int, path: str, size: int, grayscale: bool, raw_pixels: bool, standardize: bool):
    """Every image decoded, converted (L or RGB) and resized to size x size (bilinear), as [0, 1] floats; decoded
    by a pool of threads (Pillow releases the GIL while it decodes)."""
    from concurrent.futures import ThreadPoolExecutor

    with _file_errors():
        root = registry.data_folder(path, base)
        files = registry.image_files(root)
    classes = sorted({p.parent.name for p, _ in files})  # class ids are their positions (registry.image_files)

    def decode(item: tuple[Path, int]) -> np.ndarray:
        with _file_errors(), registry.open_image(item[0]) as image:
            pixels = image.convert("L" if grayscale else "RGB").resize((size, size), resample=2)  # 2: bilinear
            array = np.asarray(pixels, dtype=np.uint8)
        return array[None] if grayscale else array.transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = np.stack(list(pool.map(decode, files))).astype(np.float32) / 255.0
    labels = np.array([index for _, index in files], dtype=np.int64)
    colour = "grey" if grayscale else "RGB, channels first"
    raw = f"pixel values 0-255 of the image resized to {size}x{size} ({colour})"
    extra: dict[str, Any] = {"labels": classes}
    if raw_pixels:
        extra["scaled"] = {"image": (255.0, raw)}
    if standardize:  # per channel, over the training split's pixels
        extra["standardize"] = {"image": ((0, 2, 3), raw if raw_pixels else f"{raw}, divided by 255")}
    return {"image": images, "label": labels}, extra


def diabetes(base: Path, seed: int):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    return {"features": x.astype(np.float32), "target": y.astype(np.float32)[:, None]}


def sequences(base: Path, seed: int, task: str, vocab: int, length: int, samples: int):
    rng = np.random.default_rng(seed + 1)
    source = rng.integers(2, vocab, size=(samples, length))
    target = {"copy": source, "reverse": source[:, ::-1], "sort": np.sort(source, axis=1)}[task]
    return {"source": source.astype(np.int64), "target": np.ascontiguousarray(target).astype(np.int64)}


def sequence_classes(base: Path, seed: int, features: int, length: int, classes: int, samples: int):
    rng = np.random.default_rng(seed + 2)
    x = rng.normal(size=(samples, length, features)).astype(np.float32)
    label = x[:, :, :classes].sum(1).argmax(1)
    return {"sequence": x, "label": label.astype(np.int64)}


def text_classes(base: Path, seed: int, vocab: int, length: int, samples: int):
    rng = np.random.default_rng(seed + 3)
    bias = rng.uniform(0.3, 0.7, size=(samples, 1))
    low = rng.random((samples, length)) < bias
    tokens = np.where(
        low, rng.integers(1, vocab // 2, (samples, length)), rng.integers(vocab // 2, vocab, (samples, length))
    )
    return {"tokens": tokens.astype(np.int64), "label": (low.mean(1) > 0.5).astype(np.int64)}


def token_tags(base: Path, seed: int, vocab: int, length: int, classes: int, samples: int):
    rng = np.random.default_rng(seed + 4)
    tokens = rng.integers(1, vocab, size=(samples, length))
    previous = np.concatenate([np.zeros((samples, 1), dtype=np.int64), tokens[:, :-1]], axis=1)
    return {"tokens": tokens.astype(np.int64), "tags": ((tokens + previous % 2) % classes).astype(np.int64)}


CHARS = "abcdefghijklmnopqrstuvwxyz"


def speech(base: Path, seed: int, features: int, max_chars: int, samples: int):
    """Each character is a fixed random spectral template held for 3-6 frames, plus noise."""
    rng = np.random.default_rng(seed + 5)
    templates = rng.normal(size=(len(CHARS) + 1, features)).astype(np.float32)
    frames = max_chars * 6
    x = np.zeros((samples, frames, features), dtype=np.float32)
    transcript = np.zeros((samples, max_chars), dtype=np.int64)
    x_len = np.zeros(samples, dtype=np.int64)
    t_len = np.zeros(samples, dtype=np.int64)
    for i in range(samples):
        n = rng.integers(max(1, max_chars // 2), max_chars + 1)
        chars = rng.integers(1, len(CHARS) + 1, size=n)
        t = 0
        for ch in chars:
            hold = rng.integers(3, 7)
            x[i, t : t + hold] = templates[ch]
            t += hold
        x[i, :t] += 0.3 * rng.normal(size=(t, features))
        transcript[i, :n], t_len[i], x_len[i] = chars, n, t
    vocab = ["<blank>", *CHARS]
    return (
        {"features": x, "feature_lengths": x_len, "transcript": transcript, "transcript_lengths": t_len},
        {"vocab": vocab},
    )


# ---------------------------------------------------------------- user files


@contextmanager
def _file_errors() -> Iterator[None]:
    """A problem with a user's file (registry.BindError) as the error `dslc train` reports."""
    try:
        yield
    except BindError as exc:
        raise error(None, str(exc), exc.hint) from None


def _open(path: str, base: Path) -> Path:
    with _file_errors():
        return data_file(path, base)


def csv(
    base: Path,
    seed: int,
    path: str,
    features: tuple[str, ...],
    label: str | None,
    target: str | None,
    standardize: bool,
):
    p = _open(path, base)
    with _file_errors():
        table = read_csv(p)
        rows = table.rows
        features = tuple(select_columns(p, table.header, features))
        check_columns(p, table.header, [*features, *(c for c in (label, target) if c)])
        x = np.array([[csv_number(p, line, row, c) for c in features] for line, row in rows], dtype=np.float32)
        y = np.array([[csv_number(p, line, row, target)] for line, row in rows], dtype=np.float32) if target else None
    arrays: dict[str, np.ndarray] = {"features": x}
    extra: dict[str, Any] = {}
    if standardize:  # with the training split's statistics (sets.load), stored with the model
        extra["standardize"] = {"features": ((0,), f"the CSV columns {', '.join(features)}, as written in the file")}
    if label:
        classes = sorted({r[label] for _, r in rows}, key=lambda v: (_num(v) is None, _num(v), v))
        index = {v: i for i, v in enumerate(classes)}
        arrays["label"] = np.array([index[r[label]] for _, r in rows], dtype=np.int64)
        extra["labels"] = classes
    if y is not None:
        arrays["target"] = y
    return arrays, extra


def _num(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _numpy_arrays(named: dict[str, Path]) -> dict[str, np.ndarray]:
    out = {}
    for name, p in named.items():
        arr = np.load(p, allow_pickle=False)
        out[name] = (
            arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64) if arr.dtype.kind in "iu" else arr
        )
    return out


def npz(base: Path, seed: int, path: str):
    p = _open(path, base)
    try:
        with np.load(p, allow_pickle=False) as arrays:
            return {
                k: (
                    arrays[k].astype(np.float32)
                    if arrays[k].dtype.kind == "f"
                    else arrays[k].astype(np.int64)
                    if arrays[k].dtype.kind in "iu"
                    else arrays[k]
                )
                for k in arrays.files
            }
    except (OSError, ValueError) as exc:
        raise error(None, f"{p}: not a readable .npz file ({exc})") from None


def npy(base: Path, seed: int, files):
    try:
        return _numpy_arrays({name: _open(path, base) for name, path in files})
    except ValueError as exc:
        raise error(None, f"not a readable .npy file ({exc})") from None


def text_lm(base: Path, seed: int, path: str, length: int, stride: int | None):
    """Byte ids of the file, cut into overlapping (input, next byte) windows."""
    with _file_errors():
        data = np.frombuffer(_open(path, base).read_bytes(), dtype=np.uint8).astype(np.int64)
    step = stride or length
    starts = np.arange(0, len(data) - length, step)
    windows = np.stack([data[s : s + length + 1] for s in starts])
    vocab = [bytes([i]).decode("latin-1") for i in range(256)]
    return {"input_ids": windows[:, :-1].copy(), "labels": windows[:, 1:].copy()}, {"vocab": vocab}


def text(base: Path, seed: int, path: str, max_len: int, min_freq: int, lowercase: bool):
    with _file_errors():
        examples = text_examples(_open(path, base))
    labels_raw = [label for label, _ in examples]
    docs = [(body.lower() if lowercase else body).split() for _, body in examples]
    classes = sorted(set(labels_raw))
    label = np.array([classes.index(v) for v in labels_raw], dtype=np.int64)

    def build_vocab(data: Data, train_idx: torch.Tensor) -> None:
        counts = Counter(w for i in train_idx.tolist() for w in docs[i])
        vocab = ["<pad>", "<unk>", *sorted(w for w, n in counts.items() if n >= min_freq)]
        index = {w: i for i, w in enumerate(vocab)}
        ids = np.zeros((len(docs), max_len), dtype=np.int64)
        for i, doc in enumerate(docs):
            words = [index.get(w, 1) for w in doc[:max_len]]
            ids[i, : len(words)] = words
        all_ids = torch.from_numpy(ids)
        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed))
        n_val = len(docs) - len(train_idx)
        data.train["tokens"], data.val["tokens"] = all_ids[order[n_val:]], all_ids[order[:n_val]]
        data.vocab = vocab

    placeholder = np.zeros((len(docs), max_len), dtype=np.int64)
    return {"tokens": placeholder, "label": label}, {"labels": classes, "build_vocab": build_vocab}


LOADERS = {
    "digits": digits,
    "diabetes": diabetes,
    "sequences": sequences,
    "sequence_classes": sequence_classes,
    "text_classes": text_classes,
    "token_tags": token_tags,
    "speech": speech,
    "csv": csv,
    "image_folder": image_folder,
    "npz": npz,
    "npy": npy,
    "text": text,
    "text_lm": text_lm,
}


def vocab_json(vocab: list[str]) -> str:
    return json.dumps(vocab, ensure_ascii=False)
