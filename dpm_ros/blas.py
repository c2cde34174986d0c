"""BLAS threads of this process. numpy and scipy call OpenBLAS for their small linear algebra (the fits' 3×3 and
6×N products); with more than one thread per call, a busy second core makes each call wait for it (measured: the
focal estimate 110 ms instead of 2 on a loaded 2-core machine). The node and the benchmarks run that work on one
thread: the network has its own thread pool."""
from __future__ import annotations

import ctypes

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads")


def limit_openblas_threads(n: int = 1) -> bool:
    """``n`` threads for every OpenBLAS loaded in this process (numpy's scipy-openblas included), through its own
    API: ``OPENBLAS_NUM_THREADS`` only counts before the library loads, and importing dpm_ros loads numpy.
    Returns whether a loaded OpenBLAS took the setting (False without one, e.g. an MKL numpy)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")}
    except OSError:
        return False
    done = False
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(int(n))
                done = True
                break
    return done
