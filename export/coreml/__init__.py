"""qwen_mobile.export.coreml: Qwen3.5 to Core ML (stateful multifunction .mlpackage), and its Linux verification.

The recipes that use it are export/recipes/coreml.py and coreml_pte.py. coremltools (the `[coreml]` extra) is
imported only when a function needs it. See README.md in this folder.
"""
