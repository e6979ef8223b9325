"""Drive a Core ML bundle's two functions the way an app does: the same logic for the numpy evaluator and for Core ML.

A prompt is fed in full `prefill_chunk`-token calls of `prefill`; the remainder (< prefill_chunk tokens) and every
generated token go through `decode`, one at a time. A prompt with images (runtime/CONTRACT.md, "Images") goes the same
way through the functions that take embeddings: `embed` (prefill_chunk tokens a call, padded: a gather, stateless),
`prefill_embeddings` in full chunks and `decode_embeddings` for the rest, `decode_rope` for generated tokens, and the
vision package's `encode_image_<H>x<W>` for the pixels. Nothing stateful is ever padded, so no padded token can reach
the delta-net state. With the "io" layout the runner keeps conv/rec state (fp32) between calls; the attention cache
(and, in the "state" layout, the delta-net state) lives in the model's Core ML state. A model split over several
packages is run as a chain, hidden states passed from one package to the next.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from qwen_mobile.runtime.contract import (COREML_EMBEDDINGS_REMAINDER_FUNCTION as REMAINDER, COREML_IMAGE_FUNCTIONS,
                                          EMBED_METHOD, EMBEDDINGS_PREFILL_METHOD, ROPE_DECODE_METHOD)


class _Part:
    def __init__(self, call, io_shapes: dict):
        self.call, self.io_shapes, self.io = call, dict(io_shapes), {}


class CoreMLRunner:
    """prefill(tokens, start) / decode(token, pos) -> last logits [vocab] (torch, fp32), like BundleProgram.

    A split model is a chain of packages (manifest `program.packages`): the first takes tokens, each later one the
    previous one's `hidden_out`, the last returns logits; every package keeps its own states and host-side io.
    """

    def __init__(self, call: Callable[[str, dict], dict] | None = None, *, prefill_chunk: int,
                 gdn_layout: str = "io", io_shapes: dict[str, tuple[int, ...]] | None = None,
                 parts: list[tuple[Callable[[str, dict], dict], dict]] | None = None,
                 vision: Callable[[str, dict], dict] | None = None):
        """One package: call(function_name, inputs) -> outputs (state kept by `call`), with io_shapes of its
        host-side delta-net state in the "io" layout. A chain: parts = [(call, io_shapes), ...], first to last.
        vision: call(function_name, inputs) over the vision package (bundles with images)."""
        if parts is None:
            parts = [(call, (io_shapes or {}) if gdn_layout == "io" else {})]
        self.parts = [_Part(c, shapes) for c, shapes in parts]
        self.prefill_chunk = prefill_chunk
        self.vision = vision

    @property
    def io(self) -> dict:
        """The first package's host-side delta-net state (gdn_conv, gdn_rec) after the last call."""
        return self.parts[0].io

    def _run(self, function: str, tokens: list[int], start: int) -> np.ndarray:
        return self._chain(function, {"tokens": np.asarray([tokens], dtype=np.int32)}, start, len(tokens))

    def _chain(self, function: str, feed: dict, start: int, count: int, rope: np.ndarray | None = None
               ) -> np.ndarray:
        """Run `function` over every package; rope: the rope_pos input ([3,T], or [1] for decode_rope)."""
        positions = np.arange(start, start + count, dtype=np.int32)
        out = {}
        for i, part in enumerate(self.parts):
            inputs, fn = dict(feed, input_pos=positions), function
            if rope is not None:
                inputs["rope_pos"] = rope
                if i and function == COREML_IMAGE_FUNCTIONS[ROPE_DECODE_METHOD]:
                    # Later packages take hidden states, not tokens: the one-token embeddings function, rows equal.
                    fn, inputs["rope_pos"] = REMAINDER, np.repeat(rope.reshape(1, 1), 3, axis=0)  # [3,1]
            if part.io_shapes:
                if start == 0 or not part.io:
                    # The graph also zeroes them at position 0; fresh zeros keep the host copy honest.
                    part.io = {name: np.zeros(shape, np.float32) for name, shape in part.io_shapes.items()}
                inputs["conv_in"], inputs["rec_in"] = part.io["gdn_conv"], part.io["gdn_rec"]
            out = part.call(fn, inputs)
            if part.io_shapes:
                part.io = {"gdn_conv": np.asarray(out["conv_out"], np.float32),
                           "gdn_rec": np.asarray(out["rec_out"], np.float32)}
            if "hidden_out" in out:
                feed = {"hidden": np.asarray(out["hidden_out"], np.float32)}  # [1,T,h] into the next package
        if "logits" not in out:
            raise RuntimeError("the last package returned no logits; is the chain complete?")
        return np.asarray(out["logits"], np.float32).reshape(-1)  # [1,1,vocab] -> [vocab]

    def prefill(self, tokens: list[int], start: int) -> torch.Tensor:
        if not tokens:
            raise ValueError("prefill: no tokens")
        logits, pos, tokens = None, start, list(tokens)
        while len(tokens) >= self.prefill_chunk:
            logits = self._run("prefill", tokens[:self.prefill_chunk], pos)
            tokens, pos = tokens[self.prefill_chunk:], pos + self.prefill_chunk
        for token in tokens:
            logits = self._run("decode", [token], pos)
            pos += 1
        return torch.from_numpy(logits)

    def decode(self, token: int, pos: int) -> torch.Tensor:
        return torch.from_numpy(self._run("decode", [int(token)], pos))

    # -- image prompts (the methods runtime.program.BundleProgram has, so export/verify.py drives both) -----------
    def encode_image(self, method: str, rgb: torch.Tensor) -> torch.Tensor:
        """rgb uint8 [H,W,3] -> image embeddings [tokens, hidden] through the vision package's function `method`."""
        if self.vision is None:
            raise RuntimeError("this Core ML bundle has no vision package (exported from a checkpoint without a "
                               "vision tower, or with --no-vision)")
        pixels = np.asarray(rgb, dtype=np.float32)  # the reader's bytes as 0..255 values: Core ML has no uint8 arrays
        return torch.from_numpy(np.asarray(self.vision(method, {"rgb": pixels})["image_embeds"], np.float32))

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Token embeddings [T, hidden]: `embed` takes prefill_chunk tokens a call, a shorter tail padded with
        token 0 (a gather per row: padding changes no other row)."""
        step, rows = self.prefill_chunk, []
        for i in range(0, len(ids), step):
            chunk = list(ids[i:i + step])
            tokens = np.asarray([chunk + [0] * (step - len(chunk))], dtype=np.int32)  # [1,chunk]
            out = self.parts[0].call(COREML_IMAGE_FUNCTIONS[EMBED_METHOD], {"tokens": tokens})
            rows.append(np.asarray(out["embeds"], np.float32)[0, :len(chunk)])  # [1,chunk,h] -> [t,h]
        return torch.from_numpy(np.concatenate(rows))

    def prefill_embeddings(self, embeds: torch.Tensor, start: int, rope_pos: torch.Tensor) -> torch.Tensor:
        """embeds [T,hidden] at cache slots start.., rope_pos [3,T] -> logits [vocab] after the last: full chunks
        through prefill_embeddings, the rest one at a time through decode_embeddings (nothing padded)."""
        embeds = np.asarray(embeds, np.float32)
        rope_pos = np.asarray(rope_pos, np.int32)
        if not len(embeds):
            raise ValueError("prefill_embeddings: no embeddings")
        logits, i = None, 0
        while len(embeds) - i >= self.prefill_chunk:
            j = i + self.prefill_chunk
            logits = self._chain(COREML_IMAGE_FUNCTIONS[EMBEDDINGS_PREFILL_METHOD], {"embeds": embeds[None, i:j]},
                                 start + i, j - i, rope_pos[:, i:j])
            i = j
        for k in range(i, len(embeds)):
            logits = self._chain(REMAINDER, {"embeds": embeds[None, k:k + 1]}, start + k, 1, rope_pos[:, k:k + 1])
        return torch.from_numpy(logits)

    def decode_rope(self, token: int, pos: int, rope: int) -> torch.Tensor:
        """Logits [vocab] after one token at cache slot `pos` and rotary position `rope`."""
        return torch.from_numpy(self._chain(COREML_IMAGE_FUNCTIONS[ROPE_DECODE_METHOD],
                                            {"tokens": np.asarray([[int(token)]], np.int32)}, pos, 1,
                                            np.asarray([rope], np.int32)))


def evaluator_call(mil_model) -> Callable[[str, dict], dict]:
    """call(function, inputs) over the numpy evaluator (`MILModel`), one state shared by both functions."""
    state = mil_model.new_state()
    return lambda fn, inputs: mil_model.run(fn, inputs, state)


def evaluator_runner(mil_model, *, prefill_chunk: int, gdn_layout: str, io_shapes: dict) -> CoreMLRunner:
    """A runner over one package in the numpy evaluator."""
    return CoreMLRunner(evaluator_call(mil_model), prefill_chunk=prefill_chunk, gdn_layout=gdn_layout,
                        io_shapes=io_shapes)
