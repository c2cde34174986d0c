"""limit_openblas_threads sets the thread count of the OpenBLAS numpy loaded (read back through its own getter)."""
from __future__ import annotations

import numpy as np  # loads numpy's OpenBLAS
import pytest

from dpm_ros.blas import limit_openblas_threads, loaded_openblas, openblas_function


def _openblas_thread_counts() -> list[int]:
    """Each loaded OpenBLAS's own thread count, read through its getter."""
    getters = [openblas_function(lib, "get_num_threads") for lib in loaded_openblas()]
    return [int(fn()) for fn in getters if fn is not None]


def _numpy_built_with_openblas() -> bool:
    """numpy's own build record (independent of dpm_ros.blas's library scan)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except TypeError:   # numpy < 1.26 (the Python 3.10 minimum-versions part): no mode=, *_info dicts instead
        return "openblas" in str(getattr(np.__config__, "blas_opt_info", {})).lower()
    return "openblas" in str(blas.get("name", "")).lower()


def _expected(n: int) -> list[int]:
    """``n`` for each loaded OpenBLAS, but 1 for a sequential build (``openblas_get_parallel() == 0``, e.g. the one
    OpenCV 4.5.4's wheel bundles, seen in the Python 3.10 minimum-versions environment): it has no threads to set."""
    out = []
    for lib in loaded_openblas():
        if openblas_function(lib, "get_num_threads") is None:
            continue
        par = openblas_function(lib, "get_parallel")
        out.append(1 if par is not None and int(par()) == 0 else n)
    return out


def test_limit_sets_every_loaded_openblas():
    before = _openblas_thread_counts()
    if not _numpy_built_with_openblas():
        pytest.skip("numpy's build record names no OpenBLAS (np.show_config)")
    assert before, "numpy is built with OpenBLAS, but dpm_ros.blas found no loaded OpenBLAS with a thread getter"
    try:
        assert limit_openblas_threads(2) is True
        assert _openblas_thread_counts() == _expected(2) and 2 in _expected(2)
        assert limit_openblas_threads(1) is True
        assert _openblas_thread_counts() == _expected(1) == [1] * len(before)
    finally:
        limit_openblas_threads(max(before))    # the rest of the session keeps its default
