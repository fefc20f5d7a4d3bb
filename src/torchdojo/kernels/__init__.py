"""Small C kernels for CPU hot spots, compiled on first use with the system C compiler and cached.

`load()` returns the ctypes library, or None when it cannot be had (no compiler, not Linux, a failed build,
or TORCHDOJO_KERNELS=0); callers then fall back to PyTorch ops, so nothing depends on a compiler. The build
is `cc -O3 -march=native -fopenmp` into `$XDG_CACHE_HOME/torchdojo/kernels/` (default ~/.cache), named by a
hash of the source, the flags, the compiler and the CPU, so an edit, another compiler or another machine
sharing the home directory gets its own build. The library links the OpenMP runtime torch has already loaded
(the same `libgomp.so.1`), so the kernels run on torch's threads and honour `torch.set_num_threads`.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("bn_relu_pool.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]

_P, _L = ctypes.c_void_p, ctypes.c_long
_SIGNATURES = {
    "brp_stats_pool": (ctypes.c_int, [_P, _L, _L, _L, _L, _P, _P, _P, _P]),
    "brp_affine_relu": (None, [_P, _L, _L, _P, _P, _P]),
    "brp_grad_sums": (ctypes.c_int, [_P, _P, _P, _L, _L, _L, _P, _P, _P, _P, _P, _P]),
    "brp_dx": (None, [_P, _P, _L, _L, _L, _L, _P, _P, _P, _P]),
    "brp_stem_gram": (ctypes.c_int, [_P, *[_L] * 6, _P, _P, _P]),
    "brp_stem_sparse": (ctypes.c_int, [_P, _P, _P, *[_L] * 7, _P]),
}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchdojo" / "kernels"


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(cc: str) -> Path:
    """The cached shared library for this source, compiler and CPU; compiles it (atomically) when missing."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_id()]).encode()).hexdigest()
    target = cache_dir() / f"bn_relu_pool-{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=True)
        os.replace(tmp, target)  # another process building the same key at once writes the same bytes
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with one warning saying why, unless disabled on purpose)."""
    if os.environ.get("TORCHDOJO_KERNELS", "1") == "0":
        return None
    if not sys.platform.startswith("linux"):
        return None
    cc = _compiler()
    if cc is None:
        warnings.warn(
            "torchdojo: no C compiler (cc) found; fused CPU kernels use PyTorch ops instead "
            "(install gcc for ~10% faster CPU training of CNNs with BN and max-pool)",
            stacklevel=2,
        )
        return None
    import torch  # noqa: F401  (load torch's libgomp first, so the kernels share its OpenMP runtime)

    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stderr.strip().splitlines()[-1:] if isinstance(e, subprocess.CalledProcessError) else [str(e)]
        warnings.warn(
            f"torchdojo: building the fused CPU kernels failed ({' '.join(detail)}); using PyTorch ops", stacklevel=2
        )
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib
