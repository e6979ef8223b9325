"""qwen_mobile.runtime: the native ``qwen35::gated_delta_rule`` op.

Importing this package defines ``torch.ops.qwen35.gated_delta_rule`` (eager and export/fake) and
loads the native library, which registers the ExecuTorch kernel ``qwen35::gated_delta_rule.out``;
the library is built with CMake on first use if it is missing (see runtime/README.md).
Set ``QWEN35_RUNTIME_NO_LOAD=1`` to only define the schema (export-only machines without a
compiler); the eager op then builds/loads the library on its first call.
"""

import os as _os

from .ops import (  # noqa: F401
    ET_KERNEL_NAME,
    OP_NAME,
    GatedDeltaRuleArgumentError,
    build_library,
    chunk_size,
    is_loaded,
    isa_name,
    library_path,
    load_library,
    set_chunk_size,
    validate_args,
)

from . import wq  # noqa: E402,F401  qwen35::linear_wq / embedding_wq (same native library)
from . import state_ops  # noqa: E402,F401  qwen35::kv_cache_update, reset_state (same native library)

if not _os.environ.get("QWEN35_RUNTIME_NO_LOAD"):
    load_library()
