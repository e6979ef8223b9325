"""Run a bundle on the host: load and verify it, generate with sampling, chat, and snapshot the model state.

    bundle = Bundle("out/nano-8da4w")          # manifest schema + every sha256 checked, kernels loaded
    session = bundle.session()
    result = session.generate(bundle.encode("def f(x):"), max_new_tokens=32)
    snap = session.snapshot()                  # KV caches up to the position, conv + recurrent states
    ...
    session.restore(snap)                      # instant: no re-prefill
    session.save("turn1.safetensors"); session.load("turn1.safetensors")

Images (bundles with a vision section): `generate(ids, n, images=[load_image(path, bundle.vision)])` with one image
token per image in `ids`; the session expands it, encodes the image, and prefills through embeddings with M-RoPE
positions (runtime/CONTRACT.md, "Images"). After an image the rotary position runs `rope_offset` behind the cache slot,
so every later token of the conversation goes through the rope-aware methods.

Token bookkeeping. `Session.tokens` is every token the model state has consumed; a sampled token is consumed by the
next call (decode, or the next prefill), so after `generate` stops, its last token is `pending`: the next prompt
starts with it. That is what makes a chat that keeps its state token-for-token identical to one long generation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bundle import Bundle
from .images import BundleImage, expand_image_tokens, mrope_positions, splice_image_embeddings
from .sampling import Sampler, SamplingConfig

SNAPSHOT_FORMAT = "qwen-mobile-snapshot"
SNAPSHOT_VERSION = 1


class ContextOverflowError(ValueError):
    """A prompt that does not fit in the bundle's remaining context."""


class SnapshotError(ValueError):
    """A snapshot file that is malformed or belongs to another bundle."""


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    stop_reason: str = "max_new_tokens"  # or "stop_token", "context_full", "cancelled"
    ttft_s: float = 0.0  # prompt in -> first token sampled (image encoding included)
    image_encode_s: float = 0.0  # every image of the prompt through its encode_image method
    images: list[dict] = field(default_factory=list)  # per image: source, original and encoded size, tokens
    prefill_s: float = 0.0
    decode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # one [vocab] per sampled token, when kept

    @property
    def prefill_tok_s(self) -> float:
        return len(self.prompt_ids) / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float | None:
        return len(self.step_s) / self.decode_s if self.step_s else None

    def as_dict(self, text: str | None = None) -> dict:
        return {"prompt_ids": self.prompt_ids, "ids": self.ids, "text": text, "stop_reason": self.stop_reason,
                "prompt_tokens": len(self.prompt_ids), "generated_tokens": len(self.ids),
                "ttft_ms": self.ttft_s * 1e3, "prefill_ms": self.prefill_s * 1e3, "decode_ms": self.decode_s * 1e3,
                "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s,
                **({"images": self.images, "image_encode_ms": self.image_encode_s * 1e3} if self.images else {})}


@dataclass
class Snapshot:
    """The complete model state at `position`: KV caches trimmed to it, conv and recurrent states whole."""

    bundle_hash: str
    position: int
    tokens: list[int]
    pending: list[int]
    tensors: dict[str, torch.Tensor]
    rope_offset: int = 0  # rotary position minus cache slot (negative after an image)


class Session:
    """One conversation's model state in one bundle (the program holds a single state: one session at a time)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.program = bundle.program
        self.reset()

    def reset(self) -> None:
        # The next prefill starts at position 0, which zeroes every state buffer inside the program.
        self.tokens: list[int] = []
        self.pending: list[int] = []
        self.rope_offset = 0
        self.image_encode_s = 0.0  # of the last prefill

    @property
    def position(self) -> int:
        return len(self.tokens)

    @property
    def remaining(self) -> int:
        return self.bundle.max_seq_len - self.position

    def check_fits(self, n_new: int) -> None:
        if n_new > self.remaining:
            raise ContextOverflowError(
                f"prompt of {n_new} tokens does not fit: position {self.position} + {n_new} > the bundle's context of "
                f"{self.bundle.max_seq_len} tokens ({self.remaining} left). Shorten the prompt, reset the session, "
                "re-export with a larger --max-seq-len, or (qwen-mobile run) pass --truncate left")

    def prefill(self, ids: list[int], images: list[BundleImage] = ()) -> torch.Tensor:
        """Feed pending + ids (one image token per image in `images`, expanded here); logits [vocab] after the last."""
        vision = self.bundle.vision
        if images and vision is None:
            raise ValueError(f"{self.bundle.folder} has no image methods (exported from a checkpoint without a vision "
                             "tower, or with --no-vision): it cannot take an image")
        ids = self.pending + list(ids)
        if not ids:
            raise ValueError("prefill needs at least one token")
        if vision is not None:
            ids = expand_image_tokens(ids, images, vision["image_token_id"])
        self.check_fits(len(ids))
        for t in ids:
            if not 0 <= t < self.bundle.vocab_size:
                raise ValueError(f"token id {t} is outside the bundle's vocabulary (0..{self.bundle.vocab_size - 1})")
        self.image_encode_s = 0.0
        if images or self.rope_offset:
            logits = self._prefill_embeddings(ids, images)
        else:
            logits = self.program.prefill(ids, start_pos=self.position)
        self.tokens += ids
        self.pending = []
        return logits

    def _prefill_embeddings(self, ids: list[int], images: list[BundleImage]) -> torch.Tensor:
        vision = self.bundle.vision
        encoded = None
        if images:
            t0 = time.perf_counter()
            encoded = torch.cat([self.program.encode_image(image.method, image.rgb) for image in images])  # [N,hidden]
            self.image_encode_s = time.perf_counter() - t0
        embeds = splice_image_embeddings(self.program.embed(ids), ids, encoded, vision["image_token_id"])  # [T,hidden]
        start = self.position + self.rope_offset
        rope, next_rope = mrope_positions(ids, [image.grid_thw for image in images], vision["image_token_id"],
                                          vision["spatial_merge_size"], start=start)
        logits = self.program.prefill_embeddings(embeds, self.position, rope)
        self.rope_offset = next_rope - (self.position + len(ids))
        return logits

    def step(self, token: int) -> torch.Tensor:
        """Feed one token through the program's `decode_token` method; logits [vocab]."""
        self.check_fits(1)
        if self.rope_offset:
            logits = self.program.decode_rope(token, self.position, self.position + self.rope_offset)
        else:
            logits = self.program.decode(token, self.position)
        self.tokens.append(token)
        return logits

    def generate(self, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler | None = None, *,
                 stop_ids: set[int] | None = None, on_token=None, keep_logits: bool = False,
                 cancelled=None, images: list[BundleImage] = ()) -> GenerationResult:
        """Prefill `prompt_ids` after the current state, then sample up to `max_new_tokens`.

        Stops on a stop id (kept in `ids`, left pending), at max_new_tokens, when the context is full, or when
        `cancelled()` turns true (checked after each token; `stop_reason` says which). The state stays consistent in
        every case: the last sampled token is pending, as after max_new_tokens. `on_token(token)` streams. `images`:
        one per image token in `prompt_ids` (runtime/images.py `load_image`); `prompt_ids` in the result is expanded.
        """
        sampler = sampler or Sampler(SamplingConfig())
        stop_ids = self.bundle.stop_ids if stop_ids is None else stop_ids
        result = GenerationResult(prompt_ids=list(prompt_ids))
        t0 = time.perf_counter()
        start = self.position + len(self.pending)
        logits = self.prefill(prompt_ids, images)
        result.prefill_s = time.perf_counter() - t0
        if images:
            result.prompt_ids = self.tokens[start:]
            result.image_encode_s = self.image_encode_s
            result.images = [{"source": im.source, "original_hw": list(im.original_size), "encoded_hw": list(im.size),
                              "method": im.method, "tokens": im.tokens} for im in images]
        t_decode = 0.0
        for i in range(max_new_tokens):
            if keep_logits:
                result.logits.append(logits.clone())
            token = sampler(logits, self.tokens)
            if i == 0:
                result.ttft_s = time.perf_counter() - t0
            result.ids.append(token)
            if on_token is not None:
                on_token(token)
            if token in stop_ids:
                result.stop_reason = "stop_token"
                break
            if i == max_new_tokens - 1:
                break
            if cancelled is not None and cancelled():
                result.stop_reason = "cancelled"
                break
            if self.remaining < 1:
                result.stop_reason = "context_full"
                break
            t1 = time.perf_counter()
            logits = self.step(token)
            dt = time.perf_counter() - t1
            result.step_s.append(dt)
            t_decode += dt
        if not result.ids:
            result.ttft_s = result.prefill_s
        if result.ids:
            self.pending = [result.ids[-1]]
        result.decode_s = t_decode
        return result

    # -- snapshots ---------------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        tensors = {}
        for spec, value in zip(self.bundle.buffers, self.program.read_state(), strict=True):
            axis = spec.get("seq_axis")
            # Positions past the current one hold nothing the model can attend to; dropping them keeps a
            # snapshot proportional to the conversation, not to the bundle's context.
            tensors[spec["name"]] = value.narrow(axis, 0, self.position).clone() if axis is not None else value
        return Snapshot(self.bundle.hash, self.position, list(self.tokens), list(self.pending), tensors,
                        self.rope_offset)

    def restore(self, snap: Snapshot, origin: str = "snapshot") -> None:
        """Replace the whole state with `snap`; `origin` names it in errors (e.g. the file it was read from)."""
        if snap.bundle_hash != self.bundle.hash:
            raise SnapshotError(f"{origin} was saved from bundle {snap.bundle_hash[:12]}…, not from "
                                f"{self.bundle.folder} ({self.bundle.hash[:12]}…); refusing to load it: a state only "
                                "means something to the exact weights that wrote it")
        full = []
        for spec in self.bundle.buffers:
            if spec["name"] not in snap.tensors:
                raise SnapshotError(f"snapshot lacks state buffer '{spec['name']}'")
            value = snap.tensors[spec["name"]]
            shape, axis = list(spec["shape"]), spec.get("seq_axis")
            if axis is not None:
                if value.shape[axis] != snap.position:
                    raise SnapshotError(f"snapshot buffer '{spec['name']}' holds {value.shape[axis]} positions, "
                                        f"its header says {snap.position}")
                padded = torch.zeros(shape, dtype=value.dtype)
                padded.narrow(axis, 0, snap.position).copy_(value)
                value = padded
            if list(value.shape) != shape:
                raise SnapshotError(f"snapshot buffer '{spec['name']}' has shape {list(value.shape)}, the bundle "
                                    f"expects {shape}")
            full.append(value)
        self.program.write_state(full)
        self.tokens = list(snap.tokens)
        self.pending = list(snap.pending)
        self.rope_offset = snap.rope_offset

    def save(self, path: str | Path) -> Path:
        """Write a snapshot of the current state (safetensors; the header carries the bundle hash and tokens)."""
        from safetensors.torch import save_file

        snap = self.snapshot()
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        try:
            save_file({k: v.contiguous() for k, v in snap.tensors.items()}, str(tmp), metadata={
                "format": SNAPSHOT_FORMAT, "version": str(SNAPSHOT_VERSION), "bundle_hash": snap.bundle_hash,
                "position": str(snap.position), "tokens": json.dumps(snap.tokens), "pending": json.dumps(snap.pending),
                "rope_offset": str(snap.rope_offset)})
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not leave half a snapshot behind
            raise
        return path

    def load(self, path: str | Path) -> Snapshot:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"snapshot {path}: no such file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for a damaged header
            raise SnapshotError(f"snapshot {path}: not a readable safetensors file ({err})") from None
        if meta.get("format") != SNAPSHOT_FORMAT or meta.get("version") != str(SNAPSHOT_VERSION):
            raise SnapshotError(f"snapshot {path}: not a qwen-mobile snapshot v{SNAPSHOT_VERSION} (header "
                                f"format={meta.get('format')!r}, version={meta.get('version')!r})")
        snap = Snapshot(meta["bundle_hash"], int(meta["position"]), json.loads(meta["tokens"]),
                        json.loads(meta["pending"]), tensors, int(meta.get("rope_offset", "0")))
        self.restore(snap, origin=f"snapshot {path}")
        return snap


class TextStream:
    """Streams decoded text token by token without splitting multi-byte characters across tokens."""

    def __init__(self, bundle: Bundle, write):
        self.bundle, self.write = bundle, write
        self.ids: list[int] = []
        self.shown = 0

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.bundle.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next byte
            return
        self.write(text[self.shown:])
        self.shown = len(text)
