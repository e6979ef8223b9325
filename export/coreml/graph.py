"""The torch module each Core ML function is converted from, and the state layouts it supports.

Core ML functions have static shapes and keep mutable data in `ct.StateType`s, which must be fp16 on iOS 18. A
published Qwen3.5 port found that several states in one model break on the Neural Engine, so the attention caches of
every layer are packed into ONE state:

    kv_cache [2 * n_attn, n_kv, max_seq_len, head_dim] fp16     rows 2j / 2j+1: keys / values of attention layer j

The delta-net layers' state takes one of two layouts (GDN_LAYOUTS), compared in README.md ("State layout"):

    "io":    conv_in [n_gdn, conv_dim, K-1] and rec_in [n_gdn, Hv, Dk, Dv] fp32 inputs, returned updated as conv_out and
             rec_out: the host keeps them between calls (fp32, one state per package);
    "state": two more fp16 states, gdn_conv and gdn_rec (three states per package).

Every function takes tokens [1,T] int32 and input_pos [T] int32 (absolute positions) and returns the last position's
logits [1,1,vocab] fp32 (packages of a split model pass hidden states between them instead, see CoreMLDecoder).
A call with input_pos[0] == 0 starts a new sequence: every state is zeroed first in-graph, so a state the device hands
out uninitialised (or holding the previous conversation) never leaks, and masked cache slots can never hold NaN.
The reference for all of it is the stock `Qwen35ForCausalLM` with fp16 attention caches (`fp16_kv`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qwen_mobile.models import Qwen35ForCausalLM

from .mil_gdn import functional_op

GDN_LAYOUTS = ("io", "state")
# Additive mask for slots after the query position. Finite: -inf - -inf is NaN, and fp16 ends at 65504.
MASK_VALUE = -30000.0


class CoreMLDecoder(nn.Module):
    """One Core ML function: forward(tokens [1,T] int32, input_pos [T] int32[, conv_in, rec_in]) -> logits[, ...].

    layers=(first, end) builds one package of a split model: its states cover only those layers, a package that does
    not start at layer 0 takes hidden [1,T,h] fp32 instead of tokens (CoreMLDecoderPart), and one that does not end at
    the last layer returns every position's hidden state instead of logits.
    """

    def __init__(self, model: Qwen35ForCausalLM, gdn_layout: str = "io", layers: tuple[int, int] | None = None):
        super().__init__()
        if gdn_layout not in GDN_LAYOUTS:
            raise ValueError(f"gdn_layout={gdn_layout!r}; expected one of {GDN_LAYOUTS}")
        n_layers = model.config.num_hidden_layers
        self.layers = (0, n_layers) if layers is None else (int(layers[0]), int(layers[1]))
        if not 0 <= self.layers[0] < self.layers[1] <= n_layers:
            raise ValueError(f"layers={layers}: need 0 <= first < end <= {n_layers}")
        # A split model: the first part embeds tokens, the last applies the head; parts pass hidden states.
        self.first, self.last = self.layers[0] == 0, self.layers[1] == n_layers
        if model.max_batch_size != 1:
            raise ValueError("Core ML functions are batch 1; build the model with max_batch_size=1")
        cfg = model.config
        self.config = cfg
        self.gdn_layout = gdn_layout
        self.max_seq_len = model.max_seq_len
        # A private copy of the module tree without the model's per-layer state buffers: only the packed states below
        # may reach the converter (an unused mutable buffer would become a Core ML state of its own). fp32 weights are
        # shared, not copied: one decoder per package of a split 4B model must not hold the whole model each.
        share = {id(p): p for p in model.parameters()} if all(p.dtype == torch.float32 for p in model.parameters()) \
            else {}
        self.model = copy.deepcopy(model, share).float()
        for module in self.model.modules():
            for name in ("k_cache", "v_cache", "conv_state", "recurrent_state"):
                module._buffers.pop(name, None)
        # Drop what this package does not run, so its weights are not lifted into the exported graph at all.
        for i in range(n_layers):
            if not self.layers[0] <= i < self.layers[1]:
                self.model.model.layers[i] = nn.Identity()
        if not self.first:
            self.model.model.embed_tokens = nn.Identity()  # a tied head keeps its own reference to the table
        if not self.last:
            self.model.lm_head, self.model.model.norm = nn.Identity(), nn.Identity()
        span = range(*self.layers)
        self.attn_index = [i for i in span if cfg.layer_types[i] == "full_attention"]
        self.gdn_index = [i for i in span if cfg.layer_types[i] == "linear_attention"]
        shapes = state_shapes(cfg, self.max_seq_len, self.layers)
        if self.attn_index:
            self.register_buffer("kv_cache", torch.zeros(shapes["kv_cache"], dtype=torch.float16), persistent=False)
        if gdn_layout == "state" and self.gdn_index:
            self.register_buffer("gdn_conv", torch.zeros(shapes["gdn_conv"], dtype=torch.float16), persistent=False)
            self.register_buffer("gdn_rec", torch.zeros(shapes["gdn_rec"], dtype=torch.float16), persistent=False)

    @property
    def has_io(self) -> bool:
        """The function takes conv_in/rec_in and returns conv_out/rec_out."""
        return self.gdn_layout == "io" and bool(self.gdn_index)

    @property
    def state_names(self) -> list[str]:
        return [n for n in ("kv_cache", "gdn_conv", "gdn_rec") if n in self._buffers]

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, conv_in: torch.Tensor | None = None,
                rec_in: torch.Tensor | None = None):
        return self._run(self.model.model.embed_tokens(tokens), input_pos, conv_in, rec_in)  # [1,T,h]

    def example_inputs(self, t: int) -> tuple[torch.Tensor, ...]:
        """Inputs of a T-token call (positions 0..T-1)."""
        first_in = (torch.zeros(1, t, dtype=torch.int32) if self.first
                    else torch.zeros(1, t, self.config.hidden_size))  # tokens [1,T] or hidden [1,T,h]
        return (first_in, torch.arange(t, dtype=torch.int32)) + self._io_examples()

    def _io_examples(self) -> tuple[torch.Tensor, ...]:
        if not self.has_io:
            return ()
        shapes = state_shapes(self.config, self.max_seq_len, self.layers)
        return torch.zeros(shapes["gdn_conv"]), torch.zeros(shapes["gdn_rec"])

    @property
    def output_names(self) -> list[str]:
        # "hidden_out", not "hidden": a function's output may not share an input's name.
        return ["logits" if self.last else "hidden_out"] + (["conv_out", "rec_out"] if self.has_io else [])

    def _run(self, x, input_pos, conv_in, rec_in, rope=None):
        """rope: the rotary tables (cos, sin) [T,R] of the tokens' positions; None: 1-D positions = input_pos."""
        m, cfg = self.model, self.config
        t = x.shape[1]
        keep = (input_pos[:1] != 0).to(torch.float32)  # [1]: 0 starts a new sequence
        conv_all = rec_all = kv = None
        if self.has_io:
            conv_all, rec_all = conv_in * keep, rec_in * keep  # [Lg,C,K-1], [Lg,Hv,K,V]
        elif self.gdn_index:
            conv_all, rec_all = self.gdn_conv.float() * keep, self.gdn_rec.float() * keep
        if self.attn_index:
            kv = self.kv_cache.float() * keep  # [2La,Hkv,S,D]

        cos, sin = (m.rope_cos[input_pos], m.rope_sin[input_pos]) if rope is None else rope  # [T,R]
        slots = torch.arange(self.max_seq_len, dtype=input_pos.dtype)
        onehot = (slots[None, :] == input_pos[:, None]).to(torch.float32)  # [T,S]
        written = onehot.sum(0)[:, None] > 0  # [S,1]: slots this call writes
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        # Rows of the folded GQA scores are (g, t) head-major: query head j*G+g of kv head j, position t.
        visible = slots[None, :] <= input_pos.repeat(group)[:, None]  # [G*T,S]
        mask = torch.where(visible, 0.0, MASK_VALUE)  # [G*T,S]

        new_kv, new_conv, new_rec = [], [], []
        for i in range(*self.layers):
            layer = m.model.layers[i]
            h = layer.input_layernorm(x)
            if layer.layer_type == "linear_attention":
                j = self.gdn_index.index(i)
                h, conv_j, rec_j = layer.linear_attn.forward_state(h, conv_all[j:j + 1], rec_all[j:j + 1],
                                                                   _functional_rule)
                new_conv.append(conv_j)
                new_rec.append(rec_j)
            else:
                j = self.attn_index.index(i)
                h, k_j, v_j = _attention(layer.self_attn, h, cos, sin, mask, onehot, written, kv[2 * j], kv[2 * j + 1])
                new_kv += [k_j, v_j]
            x = layer.residual(x, h)
        # The last part returns the next-token logits only; earlier parts every position's hidden state.
        out = m.lm_head(m.model.norm(x[:, t - 1:])) if self.last else x  # [1,1,vocab] or [1,T,h]

        if self.attn_index:
            self.kv_cache.copy_(torch.stack(new_kv).to(torch.float16))
        if not self.gdn_index:
            return out
        conv_out, rec_out = torch.cat(new_conv), torch.cat(new_rec)  # [Lg,C,K-1], [Lg,Hv,K,V]
        if self.has_io:
            return out, conv_out, rec_out
        self.gdn_conv.copy_(conv_out.to(torch.float16))
        self.gdn_rec.copy_(rec_out.to(torch.float16))
        return out


class CoreMLDecoderPart(CoreMLDecoder):
    """A part after the first of a split model: forward(hidden [1,T,h] fp32, input_pos, ...) instead of tokens."""

    def forward(self, hidden: torch.Tensor, input_pos: torch.Tensor, conv_in: torch.Tensor | None = None,
                rec_in: torch.Tensor | None = None):
        return self._run(hidden, input_pos, conv_in, rec_in)


def make_decoder(model: Qwen35ForCausalLM, gdn_layout: str = "io",
                 layers: tuple[int, int] | None = None) -> CoreMLDecoder:
    """The decoder for layers [first, end): tokens in for the first part, hidden states in for the others."""
    first = layers is None or int(layers[0]) == 0
    return (CoreMLDecoder if first else CoreMLDecoderPart)(model, gdn_layout, layers)


# -- image prompts: functions that take embeddings and M-RoPE positions (runtime/CONTRACT.md, "Images") -------------
def mrope_rows(config) -> list[int]:
    """The position row (0 T, 1 H, 2 W) each rotary column turns with: Qwen35ForCausalLM.mrope_cos_sin's interleaved
    rule for the R/2 frequency slots, repeated for the NeoX halves. [R]"""
    sections = config.mrope_section
    half = [1 if i % 3 == 1 and i < 3 * sections[1] else 2 if i % 3 == 2 and i < 3 * sections[2] else 0
            for i in range(config.rotary_dim // 2)]
    return half + half


class _MRoPE(nn.Module):
    """cos, sin [T,R] of rope_pos [3,T] int32, gathered from the model's 1-D tables: column j of row r = rows[j] is
    table[rope_pos[r], j]. The tables are fp32 products computed once (fp16 in an fp16 program, as the 1-D path's),
    never angles computed in-graph: at position 1000 an fp16 angle is off by up to 0.25 rad. The one-hot column
    selection adds two exact zeros, so three equal rows give the 1-D path's values bit for bit."""

    def __init__(self, config):
        super().__init__()
        rows = torch.tensor(mrope_rows(config))
        self.register_buffer("select", (torch.arange(3)[:, None] == rows[None, :]).to(torch.float32),
                             persistent=False)  # [3,R] one-hot over the rows

    def forward(self, cos_table: torch.Tensor, sin_table: torch.Tensor, rope_pos: torch.Tensor):
        select = self.select[:, None, :]  # [3,1,R]
        cos = (cos_table[rope_pos] * select).sum(0)  # [3,T,R] -> [T,R]
        sin = (sin_table[rope_pos] * select).sum(0)
        return cos, sin


class CoreMLEmbeddingsDecoder(CoreMLDecoder):
    """forward(embeds [1,T,h] fp32, input_pos [T] int32 cache slots, rope_pos [3,T] int32 M-RoPE positions[, conv_in,
    rec_in]) -> logits[, ...]: the contract's prefill_embeddings (T = prefill_chunk) and its one-token remainder."""

    def __init__(self, model: Qwen35ForCausalLM, gdn_layout: str = "io", layers: tuple[int, int] | None = None):
        super().__init__(model, gdn_layout, layers)
        self.mrope = _MRoPE(self.config)

    def example_inputs(self, t: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, t, self.config.hidden_size), torch.arange(t, dtype=torch.int32),
                torch.zeros(3, t, dtype=torch.int32)) + self._io_examples()

    def forward(self, embeds: torch.Tensor, input_pos: torch.Tensor, rope_pos: torch.Tensor,
                conv_in: torch.Tensor | None = None, rec_in: torch.Tensor | None = None):
        rope = self.mrope(self.model.rope_cos, self.model.rope_sin, rope_pos)
        return self._run(embeds, input_pos, conv_in, rec_in, rope)


class CoreMLEmbeddingsDecoderPart(CoreMLEmbeddingsDecoder):
    """A later package of a split model: hidden [1,T,h] (the previous package's hidden_out) instead of embeds."""

    def forward(self, hidden: torch.Tensor, input_pos: torch.Tensor, rope_pos: torch.Tensor,
                conv_in: torch.Tensor | None = None, rec_in: torch.Tensor | None = None):
        rope = self.mrope(self.model.rope_cos, self.model.rope_sin, rope_pos)
        return self._run(hidden, input_pos, conv_in, rec_in, rope)


class CoreMLRopeDecoder(CoreMLDecoder):
    """forward(tokens [1,1] int32, input_pos [1] int32 cache slot, rope_pos [1] int32 rotary position[, conv_in,
    rec_in]) -> logits[, ...]: the contract's decode_token_rope (a text token after the prompt: its three rows are
    equal, so the 1-D table at rope_pos)."""

    def example_inputs(self, t: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, t, dtype=torch.int32), torch.arange(t, dtype=torch.int32),
                torch.arange(t, dtype=torch.int32)) + self._io_examples()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, rope_pos: torch.Tensor,
                conv_in: torch.Tensor | None = None, rec_in: torch.Tensor | None = None):
        m = self.model
        return self._run(m.model.embed_tokens(tokens), input_pos, conv_in, rec_in,
                         (m.rope_cos[rope_pos], m.rope_sin[rope_pos]))


class CoreMLEmbed(nn.Module):
    """forward(tokens [1,T] int32) -> embeds [1,T,h] fp32: the contract's embed_tokens, stateless. Its table is the
    decoder's own (same values, same quantization), which save_multifunction stores once."""

    state_names: list[str] = []
    gdn_index: list[int] = []
    output_names = ["embeds"]

    def __init__(self, decoder: CoreMLDecoder):
        super().__init__()
        if not decoder.first:
            raise ValueError("embed_tokens lives in the first package (the one holding the embedding table)")
        self.config = decoder.config
        self.embed_tokens = decoder.model.model.embed_tokens

    def example_inputs(self, t: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, t, dtype=torch.int32),)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(tokens).float()  # [1,T,h]


def image_functions(model: Qwen35ForCausalLM, gdn_layout: str, layers: tuple[int, int], prefill_chunk: int
                    ) -> list[tuple[str, nn.Module, int]]:
    """The extra functions (name, module, tokens) of one text package of a bundle with images (COREML_IMAGE_FUNCTIONS
    in runtime/contract.py): every package gets the embeddings prefill and its one-token remainder; the first also
    embed (prefill_chunk tokens; shorter calls pad) and decode_rope."""
    from qwen_mobile.runtime import contract

    functions = contract.COREML_IMAGE_FUNCTIONS
    first = int(layers[0]) == 0
    embeddings = (CoreMLEmbeddingsDecoder if first else CoreMLEmbeddingsDecoderPart)(model, gdn_layout, layers)
    out = [(functions[contract.EMBEDDINGS_PREFILL_METHOD], embeddings, prefill_chunk),
           (contract.COREML_EMBEDDINGS_REMAINDER_FUNCTION, embeddings, 1)]
    if first:
        out += [(functions[contract.EMBED_METHOD], CoreMLEmbed(embeddings), prefill_chunk),
                (functions[contract.ROPE_DECODE_METHOD], CoreMLRopeDecoder(model, gdn_layout, layers), 1)]
    return out


def _functional_rule(q, k, v, g, beta, state):
    """The delta rule as Qwen35GatedDeltaNet.forward_state takes it, through the functional twin of
    qwen35::gated_delta_rule (mil_gdn.functional_op): Core ML inputs are immutable and ExecuTorch's partitioner only
    takes functional ops; eagerly it runs our op on a copy of the state. -> out [1,T,Hv,V], state [1,Hv,K,V]."""
    return functional_op()(q, k, v, g, beta, state, True)


def _attention(mod, x, cos, sin, mask, onehot, written, k_cache, v_cache):
    """The model's gated attention (Qwen35Attention.heads / output) over one layer's slice of the packed fp16 cache,
    written and read the Core ML way. x [1,T,h]; caches [Hkv,S,D]."""
    b, t, _ = x.shape
    hq, hkv, d = mod.num_heads, mod.num_kv_heads, mod.head_dim
    q, k, v, gate = mod.heads(x, cos, sin)  # q [1,Hq,T,D], k/v [1,Hkv,T,D], gate [1,T,Hq*D]
    # Cache write without dynamic slicing: onehot^T [S,T] @ k [Hkv,T,D] puts each new row in its slot; the cache keeps
    # fp16 precision, as on the device.
    k_cache = torch.where(written, onehot.transpose(0, 1) @ k[0], k_cache).to(torch.float16)  # [Hkv,S,D]
    v_cache = torch.where(written, onehot.transpose(0, 1) @ v[0], v_cache).to(torch.float16)  # [Hkv,S,D]
    group = hq // hkv
    qf = q.reshape(hkv, group * t, d)  # [Hkv,G*T,D]; query head j*G+g reads kv head j
    scores = qf @ k_cache.float().transpose(1, 2) * d ** -0.5 + mask  # [Hkv,G*T,S]
    attn = torch.softmax(scores, dim=-1) @ v_cache.float()  # [Hkv,G*T,D]
    attn = attn.reshape(hq, t, d).transpose(0, 1).reshape(b, t, hq * d)  # [1,T,Hq*D]
    return mod.output(attn, gate), k_cache, v_cache


def state_shapes(cfg, max_seq_len: int, layers: tuple[int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Shapes of the packed state tensors (whichever layout holds them) of layers [first, end) (default: all)."""
    types = cfg.layer_types[slice(*layers)] if layers is not None else cfg.layer_types
    n_attn, n_gdn = types.count("full_attention"), types.count("linear_attention")
    return {
        "kv_cache": (2 * n_attn, cfg.num_key_value_heads, max_seq_len, cfg.head_dim),
        "gdn_conv": (n_gdn, cfg.conv_dim, cfg.linear_conv_kernel_dim - 1),
        "gdn_rec": (n_gdn, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim),
    }


def example_inputs(decoder: CoreMLDecoder, t: int) -> tuple[torch.Tensor, ...]:
    """Inputs of a T-token function (positions 0..T-1)."""
    return decoder.example_inputs(t)


def export_function(decoder: CoreMLDecoder, t: int) -> torch.export.ExportedProgram:
    """torch.export one static-T function for ct.convert (aliases dropped, one delta-rule node per layer)."""
    from .mil_gdn import functionalize_gated_delta

    for name in decoder.state_names:
        getattr(decoder, name).zero_()
    with torch.no_grad():
        ep = torch.export.export(decoder, example_inputs(decoder, t), strict=False)
    ep = ep.run_decompositions({})
    functionalize_gated_delta(ep)
    check_gdn_nodes(ep, len(decoder.gdn_index))
    return ep


def check_gdn_nodes(ep, expected: int) -> None:
    """Exactly one delta-rule node per delta-net layer, or the export is refused."""
    n = sum(1 for node in ep.graph.nodes if node.op == "call_function" and "gated_delta_rule" in str(node.target))
    if n != expected:
        raise RuntimeError(f"Core ML export: {n} gated_delta_rule nodes for {expected} delta-net layers; refusing a "
                           "graph without our op")


def fp16_kv(model: Qwen35ForCausalLM, gdn_fp16: bool = False) -> Qwen35ForCausalLM:
    """A copy of `model` whose attention caches (and, with gdn_fp16, delta-net states) round through fp16 storage.

    The stock forward casts on every cache write and read (`index_copy_(..., k.to(cache.dtype))`, `cache.to(q.dtype)`),
    so this is the eager reference for Core ML functions, whose states are fp16. With gdn_fp16 the references
    (`gdn_impl='reference'`) keep the recurrence in fp32 between writes, as the converted graph does.
    """
    ref = copy.deepcopy(model).float()
    for layer in ref.model.layers:
        if layer.layer_type == "full_attention":
            for name in ("k_cache", "v_cache"):
                layer.self_attn._buffers[name] = layer.self_attn._buffers[name].half()
        elif gdn_fp16:
            for name in ("conv_state", "recurrent_state"):
                layer.linear_attn._buffers[name] = layer.linear_attn._buffers[name].half()
    if gdn_fp16:
        ref.set_gdn_impl("reference")
    return ref
