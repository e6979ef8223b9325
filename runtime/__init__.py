"""qwen_mobile.runtime: our native ops (``qwen35::gated_delta_rule``, ``linear_wq``, ``embedding_wq``,
``kv_cache_update``, ``reset_state``) and the host runtime for exported bundles.

Importing this package defines the torch ops (eager and export/fake) and nothing else: no C++ is compiled or
loaded. The native library, which holds the eager kernels and registers the same kernels with ExecuTorch, is built
(if missing) and loaded by ``load_library()``, which the first eager op call makes, and so does loading a ``.pte``
through ``program.BundleProgram`` (runtime/README.md, "Build and load").
"""

from .library import build_library, is_loaded, library_path, load_library  # noqa: F401
from .ops import (  # noqa: F401
    ET_KERNEL_NAME,
    OP_NAME,
    GatedDeltaRuleArgumentError,
    chunk_size,
    isa_name,
    set_chunk_size,
    validate_args,
)

from . import wq  # noqa: E402,F401  qwen35::linear_wq / embedding_wq (same native library)
from . import state_ops  # noqa: E402,F401  qwen35::kv_cache_update, reset_state (same native library)
