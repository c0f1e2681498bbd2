"""Data sets: the embedded default, standard-format loaders and downloads."""

from discograd.data.embedded import Splits, load_digits

__all__ = ["Splits", "load_digits"]
