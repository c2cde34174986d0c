"""limit_openblas_threads sets the thread count of the OpenBLAS numpy loaded (read back through its own getter)."""
from __future__ import annotations

import ctypes

import numpy as np  # noqa: F401  (loads numpy's OpenBLAS)
import pytest

from dpm_ros.blas import limit_openblas_threads


def _openblas_thread_counts() -> list[int]:
    with open("/proc/self/maps") as f:
        paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")}
    counts = []
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                     "scipy_openblas_get_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                counts.append(int(fn()))
                break
    return counts


def test_limit_sets_every_loaded_openblas():
    before = _openblas_thread_counts()
    if not before:
        pytest.skip("this numpy does not use OpenBLAS")
    try:
        assert limit_openblas_threads(2) is True
        assert set(_openblas_thread_counts()) == {2}
        assert limit_openblas_threads(1) is True
        assert set(_openblas_thread_counts()) == {1}
    finally:
        limit_openblas_threads(max(before))    # the rest of the session keeps its default
