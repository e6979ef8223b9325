"""Backends as recipes: one file per backend behind one registry, all run by one skeleton (base.py).

    from qwen_mobile.export import export
    export("nano", "out/nano-8da4w")                                  # xnnpack, preset xnnpack-8da4w
    export("nano", "out/nano-8w", preset="xnnpack-8w")
    export("nano", "out/nano-coreml", recipe="coreml", qlinear="4w")

Adding a backend is one file here (a `Recipe` subclass: options, stages, manifest sections) plus its entry in
RECIPES, and its presets if it has any (models/MODEL.md, "Add a backend").
"""

from __future__ import annotations

from pathlib import Path

from .base import ExportJob, Recipe, run_export
from .coreml import CoreMLRecipe
from .coreml_pte import CoreMLPteRecipe
from .xnnpack import DEFAULT_PRESET, ExportSettings, XnnpackRecipe

RECIPES: dict[str, type[Recipe]] = {r.NAME: r for r in (XnnpackRecipe, CoreMLRecipe, CoreMLPteRecipe)}
DEFAULT_RECIPE = XnnpackRecipe.NAME


def make_recipe(name: str = DEFAULT_RECIPE, **options) -> Recipe:
    """The recipe `name` with its options (None: not given, the recipe's or preset's default applies)."""
    from qwen_mobile.runtime.errors import UsageError

    if name not in RECIPES:
        raise UsageError(f"--recipe {name!r}: unknown; valid recipes: {sorted(RECIPES)}")
    if name == XnnpackRecipe.NAME:
        return XnnpackRecipe.from_options(**options)
    return RECIPES[name](**{k: v for k, v in options.items() if v is not None})


def export(source: str, out: str | Path, *, recipe: str = DEFAULT_RECIPE, force: bool = False,
           progress: bool = True, **options) -> dict:
    """Export `source` (an HF folder, 'nano' or a size preset) to a verified bundle folder at `out`; the manifest.

    options: the recipe's (xnnpack: preset, qlinear, qembedding, group_size, tied_table, max_seq_len,
    max_prefill_chunk, quality_gate; coreml: qlinear, max_seq_len, prefill_chunk, gdn_layout, gdn_fp32, head_fp32,
    max_package_bytes, quality_gate; coreml-pte: qlinear, max_seq_len, prefill_chunk, quality_gate).
    Nothing is left at `out` on failure.
    """
    return run_export(make_recipe(recipe, **options), source, out, force=force, progress=progress)


__all__ = ["DEFAULT_PRESET", "DEFAULT_RECIPE", "RECIPES", "CoreMLPteRecipe", "CoreMLRecipe", "ExportJob",
           "ExportSettings", "Recipe", "XnnpackRecipe", "export", "make_recipe", "run_export"]
