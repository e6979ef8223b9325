"""Module swaps that keep the model's names: a transform replaces a module by one of a subclass that holds the very
same parameters, buffers and children, so state-dict names, and the order torch.export lifts them in, do not move."""

from __future__ import annotations

import copy

from torch import nn


def adopt(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A new `cls` instance (cls subclasses module's class) sharing module's attributes, parameters, buffers and
    children, in their order. `module` itself is left as it was; the caller puts the result in its place."""
    if not issubclass(cls, type(module)):
        raise TypeError(f"adopt: {cls.__name__} does not subclass {type(module).__name__}")
    swapped = cls.__new__(cls)
    # The registries (_parameters, _modules, hooks, ...) are copied so the swap can add or drop entries on its own.
    swapped.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return swapped


def set_submodule(root: nn.Module, module: nn.Module, replacement: nn.Module) -> None:
    """Put `replacement` where `module` sits under `root` (the first place, by identity)."""
    fqn = next(name for name, m in root.named_modules() if m is module)
    parent, _, name = fqn.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, replacement)
