"""Shared bits: the user-facing error type and JSON output (written atomically by
``eightfold.runfiles``, the one module of the package the analysis imports: stdlib only)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from eightfold.runfiles import write_atomic


class AnalysisError(Exception):
    """A problem with the input that the user can fix; the CLI prints it as one line, exit 2."""


def jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python and non-finite floats into None (JSON has no inf)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy array or scalar
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
