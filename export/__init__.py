"""qwen_mobile.export: a Qwen3.5 checkpoint to a verified bundle for a phone (recipes/: xnnpack, coreml, coreml-pte).

    from qwen_mobile.export import export
    manifest = export("nano", "out/nano-8da4w")   # returns the bundle's manifest (runtime/CONTRACT.md)
"""

from .recipes import RECIPES, export

__all__ = ["RECIPES", "export"]
