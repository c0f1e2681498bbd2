"""The embedded default data set: real handwritten digits that need no download.

1,797 8x8 digits (grey levels 0-16) of the UCI "Optical Recognition of Handwritten Digits"
set, as shipped in scikit-learn, stored in the package (``digits8x8.npz``, CC BY 4.0; see
``DIGITS_LICENSE.txt``). Split, after a fixed seeded shuffle: 1,197 train, 200 validation,
400 test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Tuple

import numpy as np
import torch
from torch import Tensor


@dataclass
class Splits:
    """A data set split three ways. Images are float in [0, 1], flattened to (n, H*W)."""

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    train_labels: Tensor
    valid_labels: Tensor
    test_labels: Tensor
    image_shape: Tuple[int, int]
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.image_shape[0] * self.image_shape[1]


def load_digits(seed: int = 0) -> Splits:
    """The embedded 8x8 digits, intensities scaled to [0, 1] (divided by 16)."""
    with resources.files("discograd.data").joinpath("digits8x8.npz").open("rb") as fh:
        archive = np.load(fh)
        images, labels = archive["images"], archive["labels"]
    order = np.random.default_rng(seed).permutation(len(images))
    x = torch.from_numpy(images[order].reshape(len(images), -1).astype(np.float32) / 16.0)
    y = torch.from_numpy(labels[order].astype(np.int64))
    a, b = 1197, 1397
    return Splits(
        name="digits",
        train=x[:a],
        valid=x[a:b],
        test=x[b:],
        train_labels=y[:a],
        valid_labels=y[a:b],
        test_labels=y[b:],
        image_shape=(8, 8),
        description="embedded UCI/scikit-learn 8x8 handwritten digits (1,797 images, CC BY 4.0)",
    )
