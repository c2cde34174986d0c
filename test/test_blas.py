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
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return "openblas" in str(blas.get("name", "")).lower()


def test_limit_sets_every_loaded_openblas():
    before = _openblas_thread_counts()
    if not _numpy_built_with_openblas():
        pytest.skip("numpy's build record names no OpenBLAS (np.show_config)")
    assert before, "numpy is built with OpenBLAS, but dpm_ros.blas found no loaded OpenBLAS with a thread getter"
    try:
        assert limit_openblas_threads(2) is True
        assert set(_openblas_thread_counts()) == {2}
        assert limit_openblas_threads(1) is True
        assert set(_openblas_thread_counts()) == {1}
    finally:
        limit_openblas_threads(max(before))    # the rest of the session keeps its default
