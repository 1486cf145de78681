"""Matrix products through Intel MKL on the CPU, as an XLA custom call (`model.cpu_matmul="mkl"`).

XLA:CPU's own float32 products run at 223-324 GFLOP/s on this project's 2-core Xeon, MKL's
at 313-365, PyTorch's at 313-381 (`python tools/bench_model.py --gemms`, 2026-11-27); in bf16
(float32 accumulation) MKL runs every transposed form natively. On a 2-core AMD EPYC (Zen 4)
MKL's float32 products ran at 99-198 GFLOP/s, XLA's at 109-214 (2026-11-27): keep "xla" there.
`gemm(a, b, trans_a, trans_b)` returns op(a) @ op(b) in float32 for 2-D float32 or bfloat16
operands.

The handler (`robertax/csrc/mkl_gemm.cc`) is compiled on first use with the system C++
compiler (`$CXX`, else `c++`) against the XLA FFI headers that jaxlib ships, and cached under
`$ROBERTAX_CACHE/ffi` (default ~/.cache/robertax). MKL comes from PyPI (`pip install mkl`: its
`libmkl_rt` lands in the environment's `lib/`) or from `$ROBERTAX_MKL_RT`, a path to
libmkl_rt.so. `available()` says whether both work here, and why not.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import robertax

Array = jax.Array

TARGET = "robertax_mkl_gemm"
_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "mkl_gemm.cc")


def find_mkl() -> str:
    """Path of libmkl_rt: $ROBERTAX_MKL_RT, else the one `pip install mkl` put in this
    environment's lib/."""
    path = os.environ.get("ROBERTAX_MKL_RT")
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ROBERTAX_MKL_RT={path}: no such file")
        return path
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
        if found:
            return found[-1]
    raise FileNotFoundError(
        f"libmkl_rt not found in {sys.prefix}/lib: install MKL (`pip install mkl`) or set "
        "ROBERTAX_MKL_RT to libmkl_rt.so")


def build() -> str:
    """Compile the handler (once per source and jaxlib version); returns the library's path."""
    import jaxlib

    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + jaxlib.__version__.encode()).hexdigest()[:16]
    out = os.path.join(robertax.cache_root(), "ffi", f"mkl_gemm-{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    cmd = [os.environ.get("CXX", "c++"), "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
           "-I", jax.ffi.include_dir(), _SOURCE, "-o", tmp, "-ldl"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"no C++ compiler to build {_SOURCE}: {e} (set CXX)") from None
    if result.returncode != 0:
        raise RuntimeError(f"building {_SOURCE} failed ({' '.join(cmd)}):\n{result.stderr}")
    os.replace(tmp, out)  # atomic: concurrent builders each write their own tmp
    return out


@functools.cache
def load() -> None:
    """Build, load MKL (sequential threading: the handler splits each product over XLA's
    threads) and register the custom call. Raises with the reason when it cannot."""
    mkl = find_mkl()
    lib = ctypes.CDLL(build())
    lib.robertax_mkl_load.restype = ctypes.c_char_p
    lib.robertax_mkl_load.argtypes = [ctypes.c_char_p]
    error = lib.robertax_mkl_load(mkl.encode()).decode()
    if error:
        raise RuntimeError(f"loading MKL from {mkl}: {error}")
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.RobertaxMklGemm), platform="cpu")


def available() -> tuple[bool, str]:
    """(True, "") when gemm() works here, else (False, why not)."""
    try:
        load()
    except (OSError, RuntimeError) as e:
        return False, str(e)
    return True, ""


def gemm(a: Array, b: Array, trans_a: bool = False, trans_b: bool = False) -> Array:
    """op(a) @ op(b) in float32, op transposing when asked; a and b 2-D, both float32 or both
    bfloat16. CPU only (jit'd programs for other backends cannot call it)."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm takes 2-D operands, got {a.shape} and {b.shape}")
    if a.dtype != b.dtype or a.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"gemm takes two float32 or two bfloat16 operands, got {a.dtype} "
                         f"and {b.dtype}")
    M, K = a.shape[::-1] if trans_a else a.shape
    Kb, N = b.shape[::-1] if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"gemm: contracted sizes differ, {a.shape} (trans_a={trans_a}) and "
                         f"{b.shape} (trans_b={trans_b})")
    load()
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((M, N), jnp.float32),
                            vmap_method="sequential")  # under vmap: one call per element
    return call(a, b, trans_a=np.bool_(trans_a), trans_b=np.bool_(trans_b))
