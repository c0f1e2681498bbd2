"""Small helpers that write PNG figures with matplotlib (an optional dependency).

matplotlib is imported only when a figure is drawn, through its object-oriented API (no
``pyplot``, no change of backend or other global state). Without it, every function raises
:class:`PlottingUnavailable` with the command that installs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["PlottingUnavailable", "image_grid", "read_jsonl", "training_curve"]


class PlottingUnavailable(ImportError):
    """matplotlib is not installed."""


def _figure(figsize: Tuple[float, float], dpi: int = 100):
    """A matplotlib Figure through the object-oriented API (no pyplot, no global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlottingUnavailable(
            "figures need matplotlib, which is not installed: "
            "pip install 'discograd[plots]' (or pip install matplotlib)"
        ) from exc
    return Figure(figsize=figsize, dpi=dpi)


def image_grid(
    images: Any,
    path: os.PathLike,
    *,
    image_shape: Tuple[int, int],
    ncols: int = 8,
    title: Optional[str] = None,
    row_labels: Optional[Sequence[str]] = None,
) -> Path:
    """Save images (n, H*W) or (n, H, W) with values in [0, 1] as a grid, ``ncols`` a row.

    Rows are filled in order; ``row_labels`` (one per row) are written at the left.
    """
    raw = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, float)
    arr: np.ndarray = raw.reshape((-1,) + tuple(image_shape))  # numpy's stubs say 0-d
    n = arr.shape[0]
    nrows = max(1, -(-n // ncols))
    h, w = image_shape
    pad = 1
    # Padding at 0.25 ink: thin light-grey lines between the images once inverted.
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), 0.25)
    for i in range(n):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = arr[i]
    scale = 0.45 if h <= 10 else 0.3 * h / 10
    fig = _figure((max(3.0, ncols * scale + (1.2 if row_labels else 0.2)), nrows * scale + 0.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(1.0 - canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(row_labels))])
        ax.set_yticklabels(list(row_labels))
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def read_jsonl(path: os.PathLike) -> List[Dict[str, Any]]:
    """The rows of a metrics.jsonl file (lines that do not parse are skipped), non-finite
    numbers read back as floats (:func:`discograd.train.read_metrics`)."""
    from discograd.train import read_metrics

    return read_metrics(path)


def training_curve(
    rows: Iterable[Dict[str, Any]],
    path: os.PathLike,
    *,
    train_key: str = "loss",
    eval_key: str = "neg_elbo",
    title: Optional[str] = None,
    ylabel: str = "nats per example",
) -> Path:
    """Plot the training loss and each evaluated split's ``eval_key`` against the step."""
    rows = list(rows)
    series: Dict[str, Tuple[List[float], List[float]]] = {}
    for row in rows:
        split = row.get("split")
        key = train_key if split == "train" else eval_key
        if split is None or key not in row:
            continue
        label = f"train {train_key}" if split == "train" else f"{split} {eval_key}"
        xs, ys = series.setdefault(label, ([], []))
        xs.append(row["step"])
        ys.append(row[key])
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in series.items():
        style = "-" if label.startswith("train") else "o-"
        ax.plot(xs, ys, style, label=label, markersize=3, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
