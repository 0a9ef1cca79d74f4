"""Data augmentation of the training split: `augment = [random_crop(image, padding=4), random_flip(image)]`.

The registry (names, parameters, the fields each accepts) is torch-free, for `dslc check`; `Augmented` applies the
checked list to every training batch, on the device, drawing from torch's global generator (seeded by `seed` and
saved in checkpoints, like dropout). Validation batches are never augmented, and neither is the exported model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dslc.params import P
from dslc.shapes import TensorType


@dataclass(frozen=True)
class Augmentation:
    name: str
    doc: str
    params: tuple[P, ...]
    check: Callable[[TensorType], str | None]  # what is wrong with the field's type, or None
    tensors: tuple[str, ...] = ("field",)  # the documented signature: the field comes first


def _images(t: TensorType) -> str | None:
    if not t.is_float or t.rank != 4:
        return f"works on float images [batch, channels, height, width]; the field is {t}"
    return None


def _spatial(t: TensorType) -> str | None:
    if not t.is_float or t.rank < 2:
        return f"works on float fields with at least one axis besides the batch; the field is {t}"
    return None


def _floats(t: TensorType) -> str | None:
    return None if t.is_float else f"works on float fields; the field is {t}"


AUGMENTATIONS: dict[str, Augmentation] = {
    a.name: a
    for a in (
        Augmentation(
            "random_crop",
            "pads each image by `padding` pixels (zeros) on every side and crops it back to its size at a random "
            "offset: shifts of up to `padding` pixels",
            (P("padding", "int", 4, "pixels of padding, the largest shift", low=1, high=1024),),
            _images,
        ),
        Augmentation(
            "random_flip",
            "mirrors each example left-right (the last axis) with probability `p`; `vertical=true` flips "
            "up-down (the second-to-last axis) instead",
            (P("p", "float", 0.5, "probability of a flip", low=0.0, high=1.0), P("vertical", "bool", False)),
            _spatial,
        ),
        Augmentation(
            "random_rotation",
            "rotates each image about its centre by an angle drawn uniformly from [-degrees, degrees] (bilinear, "
            "zeros outside)",
            (P("degrees", "float", 10.0, "the largest rotation", low=0.0, high=180.0),),
            _images,
        ),
        Augmentation(
            "noise",
            "adds Gaussian noise of standard deviation `std` to every value",
            (P("std", "float", 0.1, "standard deviation", low=0.0),),
            _floats,
        ),
    )
}


class Augmented:
    """Training batches with the augmentations applied; anything else is the wrapped batches'."""

    def __init__(self, batches: Any, augment: list[dict[str, Any]]):
        self.batches, self.augment = batches, augment

    def __len__(self) -> int:
        return len(self.batches)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batches, name)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.epoch(0)

    def epoch(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for batch in self.batches.epoch(*args, **kwargs):
            yield apply(self.augment, batch)


def apply(augment: list[dict[str, Any]], batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with each augmentation (`{"name", "field", ...options}`) applied in order."""
    batch = dict(batch)
    for a in augment:
        options = {k: v for k, v in a.items() if k not in ("name", "field")}
        batch[a["field"]] = FUNCTIONS[a["name"]](batch[a["field"]], **options)
    return batch


def random_crop(x, padding: int):
    import torch
    import torch.nn.functional as F  # noqa: N812

    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    examples = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[examples, channels, rows, cols]


def random_flip(x, p: float, vertical: bool):
    import torch

    flip = torch.rand(x.shape[0], device=x.device) < p
    mask = flip.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x.flip(-2 if vertical else -1), x)


def random_rotation(x, degrees: float):
    import torch
    import torch.nn.functional as F  # noqa: N812

    angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * (degrees * math.pi / 180)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def noise(x, std: float):
    import torch

    return x + std * torch.randn_like(x)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "random_crop": random_crop,
    "random_flip": random_flip,
    "random_rotation": random_rotation,
    "noise": noise,
}
