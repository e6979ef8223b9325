"""torch.export -> edge -> XNNPACK -> ExecuTorch program with two methods over one set of state buffers.

Methods of the program:
    forward(tokens [1,T], input_pos [T]) -> logits [1,1,vocab]   dynamic 1 <= T <= max_prefill_chunk
        Prefill. A call whose input_pos[0] == 0 starts a new sequence: it zeroes every state buffer first (in-graph,
        NaN-safe), so neither our runner nor ExecuTorch's stock LLM runner needs a reset method, and the mutable
        buffers need no serialized initial value. Returns the last position's logits only.
    decode_token(tokens [1,1], input_pos [1]) -> logits [1,1,vocab]   (DECODE_METHOD)
        One token, no reset logic: the hot loop pays for nothing it does not need.
    state_read() -> every state buffer, in manifest order (copies)
    state_write(*buffers) -> [1] zero
        Snapshots: the runtime saves the model state after a turn and restores it later without re-prefilling.
        They live in the program because its state is planned memory no runtime API exposes.
From a checkpoint with a vision tower (runtime/CONTRACT.md, "Images"), also:
    embed_tokens(tokens [1,T]) -> embeds [1,T,hidden]                   (EMBED_METHOD)
    prefill_embeddings(embeds [1,T,hidden], input_pos [T], rope_pos [3,T]) -> logits [1,1,vocab]
        `forward` over embeddings with explicit M-RoPE positions; input_pos[0] == 0 resets the state the same way.
    decode_token_rope(tokens [1,1], input_pos [1], rope_pos [1]) -> logits [1,1,vocab]
        `decode_token` whose rotary position (behind the cache slot after an image) is given apart from the slot.
    encode_image_<H>x<W>(rgb [H,W,3] uint8) -> image embeds [tokens, hidden]   (models/vision_export.py)
All methods read and write the same KV caches, conv states and recurrent states (`share_mutable_buffers`), so a prompt
prefilled by `forward` is continued by `decode_token`, and `state_write` replaces what both see.
"""

from __future__ import annotations

import torch
from torch import nn

from qwen_mobile.models import Qwen35ForCausalLM
from qwen_mobile.models.gated_delta import native_op

from qwen_mobile.runtime.contract import (DECODE_METHOD, EMBED_METHOD, EMBEDDINGS_PREFILL_METHOD, PREFILL_METHOD,
                                          ROPE_DECODE_METHOD, STATE_READ_METHOD, STATE_WRITE_METHOD, image_method,
                                          is_state_buffer)


def state_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's state buffers in the order every method and the manifest list them."""
    return [(n, b) for n, b in model.named_buffers() if is_state_buffer(n)]


class PrefillEntry(nn.Module):
    """`forward`: zero all state when the chunk starts at position 0, then run the model."""

    def __init__(self, model: Qwen35ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        # qwen35::reset_state zeroes a buffer in place only when input_pos[0] == 0 (NaN-safe: a memset). The in-graph
        # form, buf.copy_(torch.where(input_pos[:1] == 0, 0, buf)), ran a broadcasting portable `where` over all 49
        # buffers of the 0.8B model into new tensors, plus copies back, on every prefill chunk (runtime/state_ops.py).
        reset = native_op("reset_state", "which every exported forward needs")
        for _, buf in state_buffers(self.model):
            reset(buf, input_pos)
        return self.model(tokens, input_pos)


class DecodeEntry(nn.Module):
    def __init__(self, model: Qwen35ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, input_pos)


class EmbedEntry(nn.Module):
    """`embed_tokens`: the token embedding table (quantized as the recipe says), for prompts spliced with images."""

    def __init__(self, model: Qwen35ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(tokens)  # [1,T] -> [1,T,h]


class PrefillEmbeddingsEntry(nn.Module):
    """`prefill_embeddings`: PrefillEntry over embeddings with explicit M-RoPE positions."""

    def __init__(self, model: Qwen35ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, embeds: torch.Tensor, input_pos: torch.Tensor, rope_pos: torch.Tensor) -> torch.Tensor:
        reset = native_op("reset_state", "which every exported prefill needs")
        for _, buf in state_buffers(self.model):
            reset(buf, input_pos)
        return self.model.forward_embeddings(embeds, input_pos, rope_pos)  # [1,T,h], [T], [3,T]


class DecodeRopeEntry(nn.Module):
    """`decode_token_rope`: one text token at cache slot input_pos and rotary position rope_pos (all three M-RoPE rows
    equal, as for every token after the prompt; the tables are then bit-equal to `decode_token`'s)."""

    def __init__(self, model: Qwen35ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, rope_pos: torch.Tensor) -> torch.Tensor:
        embeds = self.model.model.embed_tokens(tokens)  # [1,1,h]
        return self.model.forward_embeddings(embeds, input_pos, rope_pos.expand(3, 1))  # rope_pos [1] -> [3,1]


class StateReadEntry(nn.Module):
    """`state_read`: copies of every state buffer, in `state_buffers` order."""

    def __init__(self, model: Qwen35ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self) -> tuple[torch.Tensor, ...]:
        # A clone, not the buffer itself: a method output aliasing planned mutable memory would be overwritten by
        # the next call before the caller copies it.
        return tuple(buf.clone() for _, buf in state_buffers(self.model))


class StateWriteEntry(nn.Module):
    """`state_write`: replace every state buffer (same order and shapes as `state_read` returns)."""

    def __init__(self, model: Qwen35ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        for (_, buf), value in zip(state_buffers(self.model), values, strict=True):
            buf.copy_(value)
        return torch.zeros(1)  # ExecuTorch methods need an output


def export_methods(model: Qwen35ForCausalLM, max_prefill_chunk: int,
                   image_text: bool = False) -> dict[str, torch.export.ExportedProgram]:
    """The text methods; image_text: also the three a prompt with images runs through (IMAGE_TEXT_METHODS)."""
    from torch.export import Dim

    from .transforms import kv_cache_op, last_position_logits

    model.reset()
    seq = Dim("seq", min=1, max=max_prefill_chunk)
    example_t = min(8, max_prefill_chunk)
    # Next-token logits only; KV writes through qwen35::kv_cache_update, which the program runs in place (index_copy_
    # would export as a whole-cache index_put plus a whole-cache copy back, per layer and token: runtime/state_ops.py).
    with last_position_logits(model), kv_cache_op(model):
        programs = _export_methods(model, seq, example_t)
        if image_text:
            programs.update(_export_image_text_methods(model, seq, example_t))
    return programs


def _export_image_text_methods(model: Qwen35ForCausalLM, seq, example_t: int) -> dict:
    from torch.export import export

    hidden = model.config.hidden_size
    with torch.no_grad():
        embed = export(EmbedEntry(model), (torch.zeros(1, example_t, dtype=torch.long),),
                       dynamic_shapes=({1: seq},), strict=False)
        prefill = export(PrefillEmbeddingsEntry(model),
                         (torch.zeros(1, example_t, hidden), torch.arange(example_t),
                          torch.arange(example_t).expand(3, -1).contiguous()),
                         dynamic_shapes=({1: seq}, {0: seq}, {1: seq}), strict=False)
        decode = export(DecodeRopeEntry(model), (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                                                 torch.zeros(1, dtype=torch.long)), strict=False)
    return {EMBED_METHOD: embed, EMBEDDINGS_PREFILL_METHOD: prefill, ROPE_DECODE_METHOD: decode}


def export_image_methods(visual, sizes, processor) -> dict[str, torch.export.ExportedProgram]:
    """One `encode_image_<H>x<W>` per (height, width) of `sizes` (models/vision_export.py)."""
    from qwen_mobile.models.vision_export import export_encode_image_rgb

    return {image_method(h, w): export_encode_image_rgb(visual, h, w, processor) for h, w in sizes}


def _export_methods(model: Qwen35ForCausalLM, seq, example_t: int) -> dict[str, torch.export.ExportedProgram]:
    from torch.export import export

    with torch.no_grad():  # buffer-mutating graphs cannot be lowered with autograd state
        forward = export(PrefillEntry(model), (torch.zeros(1, example_t, dtype=torch.long), torch.arange(example_t)),
                         dynamic_shapes=({1: seq}, {0: seq}), strict=False)
        decode = export(DecodeEntry(model), (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long)),
                        strict=False)
        state_read = export(StateReadEntry(model), (), strict=False)
        state_write = export(StateWriteEntry(model), tuple(torch.zeros_like(b) for _, b in state_buffers(model)),
                             strict=False)
    return {PREFILL_METHOD: forward, DECODE_METHOD: decode, STATE_READ_METHOD: state_read,
            STATE_WRITE_METHOD: state_write}


def lower_to_executorch(programs: dict, metadata: dict, parallel: bool | None = None, share_constants: bool = True,
                        lean: bool = True):
    """XNNPACK-lower every method and emit one program whose methods share their mutable buffers.

    parallel, share_constants, lean: which lowering shortcuts to take (lowering_shortcuts/__init__.py says what each
    does; they run only on the pinned torch and executorch). The program's bytes are the same either way."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    from .lowering_shortcuts import lowering_shortcuts

    with lowering_shortcuts(programs, parallel=parallel, share_constants=share_constants, lean=lean):
        edge = to_edge_transform_and_lower(
            programs, partitioner=[XnnpackPartitioner()], constant_methods=metadata,
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
        )
    et = edge.to_executorch(ExecutorchBackendConfig(
        memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True),
        emit_mutable_buffer_names=True,
        extract_delegate_segments=True,
        # Fuses torchao's dequantize_affine + embedding into quantized_decomposed::embedding_{4bit,byte}.
        do_quant_fusion_and_const_prop=True,
    ))
    graph_summary = {name: summarize_graph(et.exported_program(name).graph_module) for name in programs}
    return et, graph_summary


def program_op_namespaces(et) -> list[str]:
    """Namespaces of the non-delegated operators an emitted program calls (e.g. aten, qwen35, quantized_decomposed)."""
    names = set()
    for plan in et.executorch_program.execution_plan:
        for op in plan.operators:
            names.add(op.name.split("::")[0])
    return sorted(names)


def summarize_graph(gm: torch.fx.GraphModule) -> dict:
    """Op histogram of a lowered graph: delegate calls vs ops left to the portable/our kernels."""
    delegated = 0
    outside: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            delegated += 1
        elif name not in ("getitem",) and not name.startswith(("alloc", "sym_size", "view")):
            outside[name] = outside.get(name, 0) + 1
    return {"delegate_calls": delegated, "ops_outside_delegates": dict(sorted(outside.items(), key=lambda kv: -kv[1]))}
