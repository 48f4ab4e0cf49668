"""Turns the native module's `(bytes, dtype, shape)` triples into NumPy arrays."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np


def to_array(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], bytes):
        data, dtype, shape = value
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    return value


def to_arrays(record: Dict[str, Any]) -> Dict[str, Any]:
    return {name: to_array(value) for name, value in record.items()}
