"""Drive a Core ML bundle's two functions the way an app does: the same logic for the numpy evaluator and for Core ML.

A prompt is fed in full `prefill_chunk`-token calls of `prefill`; the remainder (< prefill_chunk tokens) and every
generated token go through `decode`, one at a time. Nothing is ever padded, so no padded token can reach the delta-net
state. With the "io" layout the runner keeps conv/rec state (fp32) between calls; the attention cache (and, in the
"state" layout, the delta-net state) lives in the model's Core ML state. A model split over several packages is
run as a chain, hidden states passed from one package to the next.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


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
                 parts: list[tuple[Callable[[str, dict], dict], dict]] | None = None):
        """One package: call(function_name, inputs) -> outputs (state kept by `call`), with io_shapes of its
        host-side delta-net state in the "io" layout. A chain: parts = [(call, io_shapes), ...], first to last."""
        if parts is None:
            parts = [(call, (io_shapes or {}) if gdn_layout == "io" else {})]
        self.parts = [_Part(c, shapes) for c, shapes in parts]
        self.prefill_chunk = prefill_chunk

    @property
    def io(self) -> dict:
        """The first package's host-side delta-net state (gdn_conv, gdn_rec) after the last call."""
        return self.parts[0].io

    def _run(self, function: str, tokens: list[int], start: int) -> np.ndarray:
        feed = {"tokens": np.asarray([tokens], dtype=np.int32)}
        positions = np.arange(start, start + len(tokens), dtype=np.int32)
        out = {}
        for part in self.parts:
            inputs = dict(feed, input_pos=positions)
            if part.io_shapes:
                if start == 0 or not part.io:
                    # The graph also zeroes them at position 0; fresh zeros keep the host copy honest.
                    part.io = {name: np.zeros(shape, np.float32) for name, shape in part.io_shapes.items()}
                inputs["conv_in"], inputs["rec_in"] = part.io["gdn_conv"], part.io["gdn_rec"]
            out = part.call(function, inputs)
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


def evaluator_call(mil_model) -> Callable[[str, dict], dict]:
    """call(function, inputs) over the numpy evaluator (`MILModel`), one state shared by both functions."""
    state = mil_model.new_state()
    return lambda fn, inputs: mil_model.run(fn, inputs, state)


def evaluator_runner(mil_model, *, prefill_chunk: int, gdn_layout: str, io_shapes: dict) -> CoreMLRunner:
    """A runner over one package in the numpy evaluator."""
    return CoreMLRunner(evaluator_call(mil_model), prefill_chunk=prefill_chunk, gdn_layout=gdn_layout,
                        io_shapes=io_shapes)
