"""Benchmarks of the hot paths (``dpm bench <target>``): helpers to pin one thread and to time a call."""
from __future__ import annotations

import ctypes
import os
import time

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def single_thread() -> dict:
    """Limit numpy/BLAS (threadpoolctl when installed, else the environment, effective only before numpy loads) and
    OpenCV to one thread. Returns what was done, for the report."""
    for var in THREAD_VARS:
        os.environ[var] = "1"
    done = {"env": True, "threadpoolctl": False, "opencv": False}
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
        done["threadpoolctl"] = True
    except ImportError:
        pass
    try:
        import cv2
        cv2.setNumThreads(1)
        done["opencv"] = True
    except ImportError:
        pass
    return done


def keep_heap() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS (mallopt: no mmap for large blocks, no trim),
    so per-call temporaries of a few MB do not page-fault on every call. Process-wide; glibc only. Returns success.
    The same effect for any process: MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    big = 1 << 30
    return bool(libc.mallopt(M_MMAP_THRESHOLD, big)) and bool(libc.mallopt(M_TRIM_THRESHOLD, big))


def time_call(fn, repeats: int, warmup: int = 2) -> dict:
    """Median, p95 and minimum wall time of ``fn()`` in milliseconds over ``repeats`` calls (after ``warmup``)."""
    import numpy as np

    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        ts.append(1000.0 * (time.perf_counter() - t))
    a = np.asarray(ts)
    return {"median_ms": round(float(np.median(a)), 4), "p95_ms": round(float(np.percentile(a, 95)), 4),
            "min_ms": round(float(a.min()), 4), "n": int(a.size)}
