"""Binarizing grey-level images x in [0, 1] into 0/1 pixels.

The sampled modes draw each pixel independently, x_bin ~ Bernoulli(x), so E[x_bin] = x:

- ``"static"``: one draw, fixed by a seed, reused for every epoch. Salakhutdinov & Murray
  (2008) made binarized MNIST this way; the ``.amat`` files of Larochelle & Murray (2011)
  are one such draw. A model sees the same binary images every epoch and can overfit them.
- ``"dynamic"``: a new draw every epoch (every time the data are visited), as in Burda,
  Grosse & Salakhutdinov (2016) and the gradient-estimator papers that follow them (REBAR,
  RELAX, ARM, DisARM). It acts as data augmentation; log-likelihoods under the two schemes
  are not comparable, so results must record which one was used
  (:func:`describe_binarization`).
- ``"threshold"``: the deterministic x_bin = [x > 1/2], for completeness.

For dynamic binarization a trainer either calls ``binarize(x, "dynamic", generator=g)``
with its own seeded generator, or holds a :class:`DynamicBinarizer` and calls
:meth:`DynamicBinarizer.next_epoch` once per epoch. Experiments evaluate on static draws
(:class:`StaticSplits`), so that runs with different training seeds and estimators are
compared on the same binary images.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor

BINARIZATION_MODES = ("static", "dynamic", "threshold")
SPLITS = ("train", "valid", "test")

_RULES = {
    "static": ("x_bin ~ Bernoulli(x), drawn once with a fixed seed", "never"),
    "dynamic": ("x_bin ~ Bernoulli(x), drawn anew every epoch", "every epoch"),
    "threshold": ("x_bin = [x > 0.5]", "never"),
    "given": ("the data are binary as published (a fixed Bernoulli draw)", "never"),
    "none": ("grey levels in [0, 1], not binarized", "never"),
}
_REFERENCES = {
    "static": "Salakhutdinov & Murray (2008), ICML",
    "dynamic": "Burda, Grosse & Salakhutdinov (2016), ICLR",
    "given": "Larochelle & Murray (2011), AISTATS",
}


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of intensities, got {x.dtype}")
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("x must hold intensities in [0, 1] (NaN is not allowed)")


def binarize(
    x: Tensor,
    mode: str = "static",
    *,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """0/1 images of the dtype and shape of ``x`` (intensities in [0, 1]).

    mode: ``"static"`` draws Bernoulli(x) from ``generator`` or, when none is given, from a
    fresh generator seeded with ``seed``, so equal arguments give equal images;
    ``"dynamic"`` draws Bernoulli(x) from ``generator`` (torch's default one when None) and
    is meant to be called once per epoch; ``"threshold"`` returns [x > 0.5].
    """
    if mode not in BINARIZATION_MODES:
        raise ValueError(f"mode must be one of {BINARIZATION_MODES}, got {mode!r}")
    _check_images(x)
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    if mode == "static" and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return torch.bernoulli(x, generator=generator)


class StaticSplits:
    """Mixin of the experiments over a :class:`~discograd.data.Splits`: :meth:`binarized`.

    The class sets ``self.data`` (the splits, intensities in [0, 1]) and
    ``self.binarize_seed``.
    """

    data: Any
    binarize_seed: int

    def binarized(self, split: str) -> Tensor:
        """The split's images binarized once with ``binarize_seed`` (static; cached)."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        cache: Dict[str, Tensor] = self.__dict__.setdefault("_binarized", {})
        if split not in cache:
            cache[split] = binarize(getattr(self.data, split), "static", seed=self.binarize_seed)
        return cache[split]


class DynamicBinarizer:
    """Dynamic binarization of a fixed tensor of intensities, one new draw per epoch.

    x: intensities in [0, 1], e.g. ``Splits.train``; seed: seeds the binarizer's own
    generator, so two binarizers with the same seed give the same sequence of epochs and
    nothing else in the program shifts it. ``state_dict``/``load_state_dict`` let a resumed
    run continue the same sequence.
    """

    def __init__(self, x: Tensor, *, seed: int = 0) -> None:
        _check_images(x)
        self.x = x
        self.seed = int(seed)
        self.epoch = 0
        self.generator = torch.Generator(device=x.device).manual_seed(self.seed)

    def next_epoch(self) -> Tensor:
        """The binary images for the next epoch: x_bin ~ Bernoulli(x), a fresh draw."""
        self.epoch += 1
        return torch.bernoulli(self.x, generator=self.generator)

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.next_epoch()

    def describe(self) -> Dict[str, Any]:
        """The settings to record with results (see :func:`describe_binarization`)."""
        return describe_binarization("dynamic", seed=self.seed)

    def state_dict(self) -> Dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "rng": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.generator.set_state(state["rng"])


def describe_binarization(mode: str, *, seed: Optional[int] = None) -> Dict[str, Any]:
    """A JSON-ready record of how the data were binarized, for results files.

    mode: one of ``"static"``, ``"dynamic"``, ``"threshold"``, ``"given"`` (data binary as
    published, e.g. binarized MNIST) or ``"none"`` (grey levels); seed: the seed used.
    """
    if mode not in _RULES:
        raise ValueError(f"mode must be one of {tuple(_RULES)}, got {mode!r}")
    rule, resampled = _RULES[mode]
    out: Dict[str, Any] = {"mode": mode, "rule": rule, "resampled": resampled}
    if mode in ("static", "dynamic"):
        out["seed"] = seed
    if mode in _REFERENCES:
        out["reference"] = _REFERENCES[mode]
    return out
