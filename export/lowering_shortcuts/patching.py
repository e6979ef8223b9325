"""One attribute of ExecuTorch or torch replaced for the length of a `with` block: how the lowering shortcuts hook in."""

from __future__ import annotations

import contextlib

_ABSENT = object()


@contextlib.contextmanager
def patched(owner, name: str, replacement):
    """`owner.name = replacement` within the block. Afterwards the attribute is what `owner` itself held (the raw
    descriptor for a class), or absent again if `owner` only inherited it."""
    own = vars(owner).get(name, _ABSENT)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        if own is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, own)
