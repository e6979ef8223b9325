"""Drive a Core ML bundle's two functions the way an app does: the same logic for the numpy evaluator and for Core ML.

A prompt is fed in full `prefill_chunk`-token calls of `prefill`; the remainder (< prefill_chunk tokens) and every
generated token go through `decode`, one at a time. Nothing is ever padded, so no padded token can reach the delta-net
state. With the "io" layout the runner keeps conv/rec state (fp32) between calls; the attention cache (and, in the
"state" layout, the delta-net state) lives in the model's Core ML state.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


class CoreMLRunner:
    """prefill(tokens, start) / decode(token, pos) -> last logits [vocab] (torch, fp32), like BundleProgram."""

    def __init__(self, call: Callable[[str, dict], dict], *, prefill_chunk: int, gdn_layout: str,
                 io_shapes: dict[str, tuple[int, ...]] | None = None):
        """call(function_name, inputs) -> outputs runs one function on the runner's state (kept by `call`)."""
        self.call = call
        self.prefill_chunk = prefill_chunk
        self.gdn_layout = gdn_layout
        self.io_shapes = io_shapes or {}
        self.io = {}

    def _run(self, function: str, tokens: list[int], start: int) -> np.ndarray:
        inputs = {"tokens": np.asarray([tokens], dtype=np.int32),
                  "input_pos": np.arange(start, start + len(tokens), dtype=np.int32)}
        if self.gdn_layout == "io":
            if start == 0 or not self.io:
                # The graph also zeroes them at position 0; fresh zeros keep the host copy honest.
                self.io = {name: np.zeros(shape, np.float32) for name, shape in self.io_shapes.items()}
            inputs["conv_in"], inputs["rec_in"] = self.io["gdn_conv"], self.io["gdn_rec"]
        out = self.call(function, inputs)
        if self.gdn_layout == "io":
            self.io = {"gdn_conv": np.asarray(out["conv_out"], np.float32),
                       "gdn_rec": np.asarray(out["rec_out"], np.float32)}
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


def evaluator_runner(mil_model, *, prefill_chunk: int, gdn_layout: str, io_shapes: dict) -> CoreMLRunner:
    """A runner over the numpy evaluator (`MILModel`), holding one state for both functions."""
    state = mil_model.new_state()
    return CoreMLRunner(lambda fn, inputs: mil_model.run(fn, inputs, state), prefill_chunk=prefill_chunk,
                        gdn_layout=gdn_layout, io_shapes=io_shapes)
