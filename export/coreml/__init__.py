"""qwen_mobile.export.coreml: Qwen3.5 to Core ML (stateful multifunction .mlpackage), and its Linux verification.

coremltools (the `[coreml]` extra) is imported only when a function needs it. See README.md in this folder.
"""

from .api import export_coreml

__all__ = ["export_coreml"]
