"""Run an exported qwen-mobile `.pte` on the host: our kernel library plus the wheel's kernels, two methods.

`BundleProgram` is the thin layer every host-side consumer uses (export verification, sessions, benchmarks):
`prefill(ids, start)` feeds a prompt through `forward` in chunks of at most `max_tokens` and returns the last
logits; `decode(token, pos)` runs one step through the program's `decode_token` method; `read_state()` /
`write_state(tensors)` copy the whole state out of and into the program (bundles exported with the snapshot methods).
State lives in the program's shared mutable buffers; a prefill starting at position 0 resets it (see
export/lowering.py).

The methods are loaded from one `Program`: ExecuTorch's pybind `Module` gives each method its own copy of the
mutable buffers, so `decode_token` would not see what `forward` wrote.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .contract import (DECODE_METHOD, EMBED_METHOD, EMBEDDINGS_PREFILL_METHOD, PREFILL_METHOD, ROPE_DECODE_METHOD,
                       STATE_READ_METHOD, STATE_WRITE_METHOD, is_image_method)

from .library import load_library
from .xnnpack_options import enable_xnnpack_weight_cache


def check_pte_header(path: Path) -> None:
    """Refuse a file that is not a whole ExecuTorch program before the runtime reads it.

    ExecuTorch 1.5.1's loader logs a bad file identifier as raw bytes, and the pybindings' log bridge then dies
    decoding them (`terminate called ... UnicodeDecodeError`, an abort, no Python exception): so the identifier and
    the extended header's sizes are checked here. Layout (executorch/exir/_serialize/_program.py): bytes 4..8 the
    flatbuffer identifier "ETnn"; at 8, "eh00", its length (u32), program size, segment offset and segment size
    (u64, little-endian).
    """
    from .bundle import BundleError

    try:
        with open(path, "rb") as f:
            head = f.read(40)
        size = path.stat().st_size
    except OSError as err:
        raise BundleError(f"{path}: cannot read the program ({err.strerror})") from None
    ident = head[4:8]
    if len(head) < 8 or ident[:2] != b"ET" or not ident[2:].isdigit():
        raise BundleError(f"{path}: not an ExecuTorch program (file identifier {ident!r}, expected b'ETnn'); the file "
                          "is corrupt or not a .pte")
    if head[8:12] == b"eh00" and len(head) >= 40:
        program_size, segment_base, segment_size = (int.from_bytes(head[i:i + 8], "little") for i in (16, 24, 32))
        needed = max(program_size, segment_base + segment_size if segment_base else 0)
        if needed > size:
            raise BundleError(f"{path}: truncated: its header says {needed} bytes, the file has {size}")


class BundleProgram:
    def __init__(self, pte_path: str | Path, *, max_prefill_tokens: int, kernel_namespaces=("qwen35",)):
        check_pte_header(Path(pte_path))
        load_library()  # registers qwen35::gated_delta_rule.out with ExecuTorch before any method loads
        load_wheel_kernels(kernel_namespaces)
        enable_xnnpack_weight_cache()  # forward and decode share one packed copy of every XNNPACK weight
        from executorch.runtime import Runtime

        self.path = Path(pte_path)
        try:
            self.program = Runtime.get().load_program(str(self.path))
        except RuntimeError as err:
            from .bundle import BundleError

            raise BundleError(f"{self.path}: ExecuTorch cannot load this program ({err}): the file is corrupt or was "
                              "written by another ExecuTorch version; check it against the manifest's sha256 (drop "
                              "--no-verify) or re-export") from None
        self.max_prefill_tokens = max_prefill_tokens
        self._forward = self.program.load_method(PREFILL_METHOD)
        names = set(self.program.method_names)
        if DECODE_METHOD not in names:
            raise RuntimeError(f"{self.path}: no method {DECODE_METHOD!r} (methods: {sorted(names)}); programs "
                               "exported before it was renamed from 'decode' must be re-exported")
        self._decode = self.program.load_method(DECODE_METHOD)
        self.has_state_methods = {STATE_READ_METHOD, STATE_WRITE_METHOD} <= names
        self._state_read = self.program.load_method(STATE_READ_METHOD) if self.has_state_methods else None
        self._state_write = self.program.load_method(STATE_WRITE_METHOD) if self.has_state_methods else None
        self.image_methods = sorted(n for n in names if is_image_method(n))
        self._methods: dict[str, object] = {}  # the image path's methods, loaded on first use

    def metadata(self) -> dict:
        """The program's own constant methods (get_max_context_len, get_vocab_size, ...): name -> value(s)."""
        values = {}
        for name in sorted(self.program.method_names):
            if name.startswith(("get_", "use_", "enable_")):
                out = self.program.load_method(name).execute([])
                values[name] = [v.item() if isinstance(v, torch.Tensor) else v for v in out]
        return {k: v[0] if len(v) == 1 else v for k, v in values.items()}

    def prefill(self, ids: list[int], start_pos: int = 0, chunk: int | None = None) -> torch.Tensor:
        """Logits [vocab] after the last prompt token. Chunks of at most `chunk` (default: the method's bound)."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        chunk = min(chunk or self.max_prefill_tokens, self.max_prefill_tokens)
        logits = None
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            pos = torch.arange(start_pos + i, start_pos + i + len(part))
            logits = self._forward.execute([torch.tensor([part], dtype=torch.long), pos])[0]
        return logits[0, -1]

    def decode(self, token: int, pos: int) -> torch.Tensor:
        """Logits [vocab] after one token at absolute position `pos`."""
        return self._decode.execute([torch.tensor([[token]], dtype=torch.long), torch.tensor([pos])])[0][0, -1]

    # -- image prompts (CONTRACT.md, "Images") ------------------------------------------------------------------
    def _method(self, name: str):
        if name not in self._methods:
            if name not in set(self.program.method_names):
                raise RuntimeError(f"{self.path}: no method {name!r}: this bundle has no image methods (exported "
                                   "from a checkpoint without a vision tower, or with --no-vision)")
            self._methods[name] = self.program.load_method(name)
        return self._methods[name]

    def encode_image(self, method: str, rgb: torch.Tensor) -> torch.Tensor:
        """rgb uint8 [H,W,3] at the method's size -> image embeddings [tokens, hidden]."""
        return self._method(method).execute([rgb.contiguous()])[0]

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Token embeddings [T, hidden], in chunks of at most the prefill bound."""
        step = self.max_prefill_tokens
        parts = [self._method(EMBED_METHOD).execute([torch.tensor([ids[i:i + step]], dtype=torch.long)])[0][0]
                 for i in range(0, len(ids), step)]  # each [1,t,hidden] -> [t,hidden]
        return torch.cat(parts)

    def prefill_embeddings(self, embeds: torch.Tensor, start_pos: int, rope_pos: torch.Tensor) -> torch.Tensor:
        """embeds [T,hidden] at cache slots start_pos.., rope_pos [3,T] -> logits [vocab] after the last one."""
        step, logits = self.max_prefill_tokens, None
        for i in range(0, embeds.shape[0], step):
            part = embeds[i:i + step]  # [t,hidden]
            slots = torch.arange(start_pos + i, start_pos + i + part.shape[0])
            logits = self._method(EMBEDDINGS_PREFILL_METHOD).execute(
                [part[None].contiguous(), slots, rope_pos[:, i:i + step].contiguous()])[0]  # [1,t,h] in
        return logits[0, -1]

    def decode_rope(self, token: int, pos: int, rope: int) -> torch.Tensor:
        """Logits [vocab] after one token at cache slot `pos` and rotary position `rope`."""
        return self._method(ROPE_DECODE_METHOD).execute(
            [torch.tensor([[token]], dtype=torch.long), torch.tensor([pos]), torch.tensor([rope])])[0][0, -1]

    def read_state(self) -> list[torch.Tensor]:
        """Copies of every state buffer, in the manifest's `state.buffers` order."""
        self._require_state_methods()
        return [t.clone() for t in self._state_read.execute([])]

    def write_state(self, tensors: list[torch.Tensor]) -> None:
        """Replace every state buffer; shapes and order as `read_state` returns them."""
        self._require_state_methods()
        self._state_write.execute([t.contiguous() for t in tensors])

    def _require_state_methods(self):
        if not self.has_state_methods:
            raise RuntimeError(f"{self.path}: this program has no state_read/state_write methods (exported by an "
                               "older qwen-mobile); re-export the bundle to use snapshots")


# ExecuTorch kernel libraries in the executorch wheel that a program may need besides the portable ops, keyed by
# the op namespace that needs them.
WHEEL_KERNEL_LIBRARIES = {"quantized_decomposed": "libexecutorch_kernels_quantized.so"}


def load_wheel_kernels(namespaces) -> None:
    """Register the wheel's extra ExecuTorch kernels (e.g. quantized embeddings) with the pybindings' registry."""
    import ctypes

    import executorch

    lib_dir = Path(list(executorch.__path__)[0]) / "lib"
    for ns in sorted(set(namespaces)):
        name = WHEEL_KERNEL_LIBRARIES.get(ns)
        if name and name not in _LOADED:
            ctypes.CDLL(str(lib_dir / name), mode=ctypes.RTLD_GLOBAL)
            _LOADED.add(name)


_LOADED: set[str] = set()
