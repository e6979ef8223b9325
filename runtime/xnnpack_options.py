"""Process-wide options of ExecuTorch's XNNPACK backend that its Python bindings cannot set (kernels/xnnpack_options.cpp).

They are read when a program's methods are loaded, so they are set before: `program.py` does, right after loading
our library (whose kernels the program calls anyway).
"""

from __future__ import annotations

import ctypes

from .library import load_library


def enable_xnnpack_weight_cache() -> None:
    """Turn on XNNPACK's packed-weight cache for every program loaded from now on in this process.

    Our programs' `forward` and `decode_token` call the same XNNPACK-lowered linears; without the cache each method
    packs its own copy of every weight at load (kernels/xnnpack_options.cpp). Raises if the XNNPACK backend refuses.
    """
    import executorch.runtime  # noqa: F401  loads the pybindings, whose libraries register the XNNPACK backend

    set_weight_cache = load_library().qwen35_xnnpack_set_weight_cache
    set_weight_cache.argtypes, set_weight_cache.restype = [ctypes.c_int], ctypes.c_int
    err = set_weight_cache(1)
    if err:
        raise RuntimeError(f"XnnpackBackend refused weight_cache_enabled (ExecuTorch error {err}); is the XNNPACK "
                           "backend linked into these pybindings?")
