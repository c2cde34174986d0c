"""BLAS threads of this process. numpy and scipy call OpenBLAS for their small linear algebra (the fits' 3×3 and
6×N products); with more than one thread per call, a busy second core makes each call wait for it (measured: the
focal estimate 110 ms instead of 2 on a loaded 2-core machine). The node and the benchmarks run that work on one
thread: the network has its own thread pool."""
from __future__ import annotations

import ctypes

# the setter / getter names of the OpenBLAS builds numpy and scipy ship (scipy-openblas prefixes and 64-bit ints)
_PREFIXES = ("openblas_", "scipy_openblas_")
_SUFFIXES = ("", "64_")


def loaded_openblas() -> list[ctypes.CDLL]:
    """Every OpenBLAS library mapped into this process (empty without one, e.g. an MKL numpy)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")}
    except OSError:
        return []
    libs = []
    for path in sorted(paths):
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def openblas_function(lib: ctypes.CDLL, name: str):
    """``lib``'s ``openblas_<name>`` under any of its builds' spellings, or None."""
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            fn = getattr(lib, f"{prefix}{name}{suffix}", None)
            if fn is not None:
                return fn
    return None


def limit_openblas_threads(n: int = 1) -> bool:
    """``n`` threads for every OpenBLAS loaded in this process (numpy's scipy-openblas included), through its own
    API: ``OPENBLAS_NUM_THREADS`` only counts before the library loads, and importing dpm_ros loads numpy.
    Returns whether a loaded OpenBLAS took the setting (False without one, e.g. an MKL numpy)."""
    done = False
    for lib in loaded_openblas():
        fn = openblas_function(lib, "set_num_threads")
        if fn is not None:
            fn(int(n))
            done = True
    return done
