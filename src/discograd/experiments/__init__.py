"""Runnable experiments: thin scripts over the library, exposed by the command line.

- :mod:`discograd.experiments.sequences`: grammar and Markov-oracle sequence data and their
  metrics (grammaticality, oracle NLL, diversity).
- :mod:`discograd.experiments.gan`: a GAN over discrete sequences trained with any estimator
  that yields differentiable samples, or with the score function (``discograd gan``).
- :mod:`discograd.experiments.toys`: the seeds' worked examples (``discograd toy NAME``).
- :mod:`discograd.experiments.sbn`, :mod:`discograd.experiments.semisup`,
  :mod:`discograd.experiments.compare`, :mod:`discograd.experiments.presets`: the structured
  output, semi-supervised and comparison experiments and the named settings (see each).

Submodules are imported on demand; importing this package loads nothing else.
"""

from __future__ import annotations

from typing import Tuple


def figure(figsize: Tuple[float, float], dpi: int = 100):
    """A matplotlib Figure through the object-oriented API (no pyplot, no global state).

    Raises :class:`discograd.plotting.PlottingUnavailable` when matplotlib is missing.
    """
    from discograd.plotting import _figure

    return _figure(figsize, dpi)
