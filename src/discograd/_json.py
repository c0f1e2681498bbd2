"""Strict JSON for numbers that may be NaN or infinite.

JSON has no token for NaN or infinity (Python's ``json`` writes ``NaN`` and ``Infinity``, which
strict parsers reject), so the files discograd writes hold them as the strings ``"nan"``,
``"inf"`` and ``"-inf"``: :func:`dumps` writes them so, :func:`numbers` reads them back.
"""

from __future__ import annotations

import json
import math
from typing import Any

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def strings(value: Any) -> Any:
    """``value`` with every non-finite float, in lists and dicts too, as its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [strings(v) for v in value]
    if isinstance(value, dict):
        return {k: strings(v) for k, v in value.items()}
    return value


def numbers(value: Any) -> Any:
    """The inverse of :func:`strings`: "nan", "inf", "-inf" back to floats, in lists and dicts."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, list):
        return [numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items()}
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` as strict JSON (non-finite floats as strings)."""
    return json.dumps(strings(value), allow_nan=False, **kwargs)
