"""Thread control of the CPU runtime: one setting for the compiled kernel's OpenMP threads and numpy's BLAS pool.

Why the runtime owns both: numpy's OpenBLAS keeps its own worker threads, which busy-wait for a while after every
call. When the kernel's OpenMP threads run next, those spinning workers take the cores the kernel needs: on a
2-core machine a 256x256 frame ran 2.5x *slower* on 2 threads than on 1, and one read-out GEMM took 0.28 s
instead of 0.01 s (issue 21's measurements). So while a :class:`~edgespike.runtime.Runtime` runs a frame it sets
its kernel's thread count and limits BLAS to **1 thread** for that time (restored afterwards;
``Runtime.blas_threads`` changes it). The
runtime's GEMMs are skinny (a tap's ``[pixels x C_in] @ [C_in x C_out]`` with 64 or fewer output columns); on the
2-core development machine a second OpenBLAS thread made each of them slower, 1.1x-4.1x (docs/BENCHMARKS.md,
"Threads", ``tools/bench/threads.py --blas``). The parallel work is the kernel's.

The setting: ``Runtime(threads=N)``, else ``EDGESPIKE_THREADS``, else the usable CPUs (at most 8); the CLI's
``--threads`` sets ``EDGESPIKE_THREADS``. BLAS is limited with threadpoolctl when it is installed (any BLAS
numpy was built with), else through OpenBLAS's own C functions (the BLAS of numpy's wheels); if neither is
found, BLAS is left alone and :func:`blas_control` says so.

Idle OpenMP workers sleep (``OMP_WAIT_POLICY=PASSIVE``, set by :mod:`edgespike` on import unless already set).
libgomp reads that variable once, when it is loaded; a library that loaded it earlier (``import torch`` before
``import edgespike``) leaves its workers spinning, which slows the kernel ~1.5x on a busy machine: a warning
says so (:func:`check_wait_policy`).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import warnings
from pathlib import Path

MAX_DEFAULT = 8
"""The default thread count is the usable CPUs, at most this many."""

_KERNEL_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("edgespike_threads", default=None)
_GOMP_EARLY: bool | None = None  # libgomp was loaded before edgespike could ask for sleeping workers
_WARNED = False


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or ``taskset``'s limit)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve(threads: int | None = None) -> int:
    """The thread count to use: ``threads`` if given, else ``EDGESPIKE_THREADS``, else the usable CPUs (at most
    :data:`MAX_DEFAULT`). Raises ``ValueError`` for a count below 1 or a non-integer variable."""
    if threads is None:
        env = os.environ.get("EDGESPIKE_THREADS", "").strip()
        if not env:
            return min(usable_cpus(), MAX_DEFAULT)
        try:
            threads = int(env)
        except ValueError:
            raise ValueError(f"EDGESPIKE_THREADS must be a whole number of threads, got {env!r}") from None
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"the thread count must be at least 1, got {threads}")
    return threads


def kernel_threads() -> int:
    """Threads for the compiled kernel in the current context (set by :func:`limits`), else :func:`resolve`."""
    n = _KERNEL_THREADS.get()
    return n if n is not None else resolve()


# ----------------------------------------------------------------------------------------------- BLAS control


class _OpenBLAS:
    """numpy's OpenBLAS through its C functions (found among the libraries mapped into this process)."""

    def __init__(self):
        self.set = self.get = None
        try:
            maps = Path("/proc/self/maps").read_text().splitlines()
        except OSError:
            return
        libs = sorted({ln.split()[-1] for ln in maps if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
        for path in libs:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for suffix in ("64_", ""):
                for prefix in ("scipy_openblas", "openblas"):
                    s, g = f"{prefix}_set_num_threads{suffix}", f"{prefix}_get_num_threads{suffix}"
                    if hasattr(lib, s) and hasattr(lib, g):
                        self.set, self.get = getattr(lib, s), getattr(lib, g)
                        self.set.argtypes, self.set.restype = [ctypes.c_int], None
                        self.get.argtypes, self.get.restype = [], ctypes.c_int
                        return

    @contextlib.contextmanager
    def limit(self, n: int):
        old = self.get()
        if old == n:
            yield
            return
        self.set(n)
        try:
            yield
        finally:
            self.set(old)


_BLAS = None


def _blas():
    """The BLAS controller: ``("threadpoolctl", controller)``, ``("openblas", _OpenBLAS)`` or ``(None, None)``."""
    global _BLAS
    if _BLAS is None:
        import numpy  # noqa: F401  (BLAS is loaded with numpy: it must be mapped before it can be found)

        try:
            from threadpoolctl import ThreadpoolController

            ctl = ThreadpoolController()
            _BLAS = ("threadpoolctl", ctl) if ctl.select(user_api="blas").lib_controllers else (None, None)
        except ImportError:
            ob = _OpenBLAS()
            _BLAS = ("openblas", ob) if ob.set is not None else (None, None)
    return _BLAS


def blas_control() -> str | None:
    """How BLAS threads are limited: ``"threadpoolctl"``, ``"openblas"`` or ``None`` (not controlled)."""
    return _blas()[0]


@contextlib.contextmanager
def blas_limit(n: int):
    """Limit numpy's BLAS to ``n`` threads inside the block (process-wide while it lasts; restored after)."""
    kind, ctl = _blas()
    if kind == "threadpoolctl":
        with ctl.limit(limits=n, user_api="blas"):
            yield
    elif kind == "openblas":
        with ctl.limit(n):
            yield
    else:
        yield


@contextlib.contextmanager
def limits(threads: int, blas_threads: int):
    """Inside the block the compiled kernel uses ``threads`` threads (this context only: concurrent runtimes in
    other Python threads keep theirs) and BLAS ``blas_threads``."""
    token = _KERNEL_THREADS.set(threads)
    try:
        with blas_limit(blas_threads):
            yield
    finally:
        _KERNEL_THREADS.reset(token)


# ------------------------------------------------------------------------------------------- OpenMP waiting


def gomp_loaded() -> bool:
    """Whether GNU OpenMP (libgomp) is mapped into this process."""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def note_import() -> None:
    """Called by ``import edgespike``: remember whether libgomp came first without ``OMP_WAIT_POLICY``, then ask
    for sleeping workers for every OpenMP runtime loaded from now on."""
    global _GOMP_EARLY
    if "OMP_WAIT_POLICY" not in os.environ:
        _GOMP_EARLY = gomp_loaded()
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        _GOMP_EARLY = False


def check_wait_policy(threads: int) -> bool:
    """Warn once if the kernel's OpenMP workers will spin: libgomp was loaded (by torch, say) before
    ``import edgespike`` and ``OMP_WAIT_POLICY`` was unset. Returns whether they spin."""
    global _WARNED
    if not _GOMP_EARLY or threads < 2:
        return False
    if not _WARNED:
        _WARNED = True
        warnings.warn("OpenMP was loaded before edgespike (import torch first?) with busy-waiting workers, which "
                      "slow the runtime's kernel; set OMP_WAIT_POLICY=PASSIVE in the environment, or import "
                      "edgespike first", RuntimeWarning, stacklevel=3)
    return True


# ------------------------------------------------------------------------------------------------------- CLI


def add_threads_argument(p) -> None:
    """The ``--threads`` option of the commands that run the CPU runtime."""
    p.add_argument("--threads", type=int, metavar="N", help="threads of the CPU runtime (its C kernel; numpy's "
                   "BLAS is limited alongside); default EDGESPIKE_THREADS, else the usable CPUs (at most 8)")


def apply_threads_argument(args) -> int:
    """Make ``--threads`` the process's setting (``EDGESPIKE_THREADS``) and check it, or the variable, as a user
    error (one line, exit 2). Returns the thread count."""
    from edgespike.errors import UserError

    given = getattr(args, "threads", None)
    try:
        n = resolve(given)
    except ValueError as exc:
        raise UserError(f"--threads: {exc}" if given is not None else str(exc)) from None
    if given is not None:
        os.environ["EDGESPIKE_THREADS"] = str(n)
    return n
