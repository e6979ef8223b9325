"""Qwen3.5 text decoder, shaped for export.

Attribute names follow transformers' `Qwen3_5ForCausalLM`, so checkpoint keys map almost one to one
(`model.layers.{i}.linear_attn.in_proj_qkv.weight`, `...self_attn.q_proj.weight`, ...). All decoding state lives in
buffers of fixed shape, so one `forward(tokens, input_pos)` serves prefill (T > 1) and decode (T == 1) eagerly and
under `torch.export`:

  * full-attention layers: `k_cache`, `v_cache` [B, n_kv, max_seq_len, head_dim] holding post-norm, post-RoPE keys;
  * delta-net layers: `conv_state` [B, conv_dim, kernel-1] of raw pre-conv inputs and `recurrent_state`
    [B, n_v, d_k, d_v] in float32.

The caller owns positions: `input_pos` holds the absolute positions of `tokens`. `reset()` zeroes every state; a new
sequence must start with it, since stale delta-net state leaks silently.

This file holds the model only. Export-time rewrites (fused projections, the KV-cache op, last-position logits,
weight-only linears) are module swaps in export/transforms/ and export/quantize.py, applied to a loaded model. Graphs
that carry state as inputs and outputs (Core ML) call the layers' explicit-state entry points instead of copying them:
`Qwen35GatedDeltaNet.forward_state`, `Qwen35Attention.heads` / `output`, `Qwen35DecoderLayer.residual`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen35Config
from .gated_delta import IMPLS, gated_delta_rule


DEFAULT_MAX_SEQ_LEN = 2048
# rule(q, k, v, g, beta, state) -> (out, next state): the delta rule as Qwen35GatedDeltaNet.forward_state takes it.
DeltaRule = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def default_max_seq_len(config: Qwen35Config) -> int:
    """Cache length when none is asked for: 2048, or less if the model itself is shorter."""
    return min(DEFAULT_MAX_SEQ_LEN, config.max_position_embeddings)


def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) over the last dim, shaped [..., 1].

    The mean is taken over a [B, N, D, 1] view: XNNPACK delegates mean.dim only on 4-D tensors over dims (2, 3),
    so this keeps every norm inside the delegate instead of splitting the graph around it.
    """
    sq = (x * x).reshape(x.shape[0], -1, x.shape[-1], 1)  # [B,N,D,1]
    return torch.rsqrt(sq.mean((2, 3), keepdim=True) + eps).reshape(*x.shape[:-1], 1)  # [...,1]


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) as relu(x) + log(1 + e^-|x|): stable, and built from ops XNNPACK delegates (F.softplus is not)."""
    return torch.relu(x) + torch.log(1.0 + torch.exp(-torch.abs(x)))


class Qwen35RMSNorm(nn.Module):
    """Offset RMSNorm: y = x_hat * (1 + w), w initialised to 0, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * rms_scale(xf, self.eps) * (1.0 + self.weight.float())).type_as(x)


class Qwen35RMSNormGated(nn.Module):
    """Gated RMSNorm at the delta-net output: y = (w * x_hat) * silu(z); plain w (initialised to 1), norm first."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        y = self.weight * (xf * rms_scale(xf, self.eps)).to(dtype)
        return (y * F.silu(gate.float())).to(dtype)


class Qwen35MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.intermediate = intermediate
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen35GatedDeltaNet(nn.Module):
    """Gated DeltaNet mixer: projections, causal depthwise conv + SiLU, gates, delta rule, gated norm, out_proj."""

    def __init__(self, config: Qwen35Config, gdn_impl: str = "op"):
        super().__init__()
        self.num_k_heads = config.linear_num_key_heads
        self.num_v_heads = config.linear_num_value_heads
        self.head_k_dim = config.linear_key_head_dim
        self.head_v_dim = config.linear_value_head_dim
        self.key_dim = self.num_k_heads * self.head_k_dim
        self.value_dim = self.num_v_heads * self.head_v_dim
        self.conv_dim = config.conv_dim
        self.conv_kernel_size = config.linear_conv_kernel_dim
        self.gdn_impl = gdn_impl

        self.in_proj_qkv = nn.Linear(config.hidden_size, self.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(config.hidden_size, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(config.hidden_size, self.num_v_heads, bias=False)
        self.in_proj_a = nn.Linear(config.hidden_size, self.num_v_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.conv_kernel_size, groups=self.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.num_v_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_v_heads))
        self.norm = Qwen35RMSNormGated(self.head_v_dim, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, config.hidden_size, bias=False)

    def project(self, x: torch.Tensor):
        """x [B,T,h] -> mixed [B,T,conv_dim], z [B,T,Hv*V], b [B,T,Hv], a [B,T,Hv] (export fuses these linears)."""
        return self.in_proj_qkv(x), self.in_proj_z(x), self.in_proj_b(x), self.in_proj_a(x)

    def setup_state(self, batch_size: int, dtype: torch.dtype) -> None:
        # 3 raw columns suffice for a width-4 filter; transformers keeps 4.
        conv = torch.zeros(batch_size, self.conv_dim, self.conv_kernel_size - 1, dtype=dtype)
        rec = torch.zeros(batch_size, self.num_v_heads, self.head_k_dim, self.head_v_dim, dtype=torch.float32)
        self.register_buffer("conv_state", conv, persistent=False)
        self.register_buffer("recurrent_state", rec, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,T,h] -> [B,T,h], advancing conv_state and recurrent_state in place."""
        def rule_in_place(q, k, v, g, beta, state):
            return gated_delta_rule(q, k, v, g, beta, state, impl=self.gdn_impl), state

        y, conv_state, _ = self.forward_state(x, self.conv_state, self.recurrent_state, rule_in_place)
        self.conv_state.copy_(conv_state)
        return y

    def forward_state(self, x: torch.Tensor, conv_state: torch.Tensor, recurrent_state: torch.Tensor,
                      rule: DeltaRule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mixer over explicit state, for graphs that pass state in and out (export/coreml/graph.py).

        x [B,T,h], conv_state [B,conv_dim,K-1] (raw pre-conv inputs), recurrent_state [B,Hv,K,V] ->
        y [B,T,h], the next conv_state [B,conv_dim,K-1], the next recurrent state [B,Hv,K,V] (rule's).
        rule(q [B,T,Hk,K], k, v [B,T,Hv,V], g, beta [B,T,Hv], state) -> (out [B,T,Hv,V], next state).
        """
        b, t, _ = x.shape
        mixed, z, b_proj, a_proj = self.project(x)
        mixed = mixed.transpose(1, 2)  # [B,conv_dim,T]
        beta = b_proj.float().sigmoid()  # [B,T,Hv]
        # fp32 island: exp(A_log) overflows in fp16.
        g = -self.A_log.float().exp() * softplus(a_proj.float() + self.dt_bias.float())  # [B,T,Hv]

        window = torch.cat([conv_state, mixed.to(conv_state.dtype)], dim=-1)  # [B,conv_dim,K-1+T]
        next_conv_state = window[:, :, -(self.conv_kernel_size - 1):]  # [B,conv_dim,K-1]
        conv = F.conv1d(window.to(self.conv1d.weight.dtype), self.conv1d.weight, groups=self.conv_dim)  # [B,conv_dim,T]
        mixed = F.silu(conv).to(x.dtype).transpose(1, 2)  # [B,T,conv_dim]

        q, k, v = torch.split(mixed, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(b, t, self.num_k_heads, self.head_k_dim)  # [B,T,Hk,K]
        k = k.reshape(b, t, self.num_k_heads, self.head_k_dim)  # [B,T,Hk,K]
        v = v.reshape(b, t, self.num_v_heads, self.head_v_dim)  # [B,T,Hv,V]
        out, next_recurrent_state = rule(q, k, v, g, beta, recurrent_state)  # [B,T,Hv,V], [B,Hv,K,V]

        out = self.norm(out.reshape(b, t, self.num_v_heads, self.head_v_dim),
                        z.reshape(b, t, self.num_v_heads, self.head_v_dim))  # [B,T,Hv,V]
        return self.out_proj(out.reshape(b, t, self.value_dim)), next_conv_state, next_recurrent_state  # [B,T,h]


class CacheWrite(nn.Module):
    """How attention stores new rows in its cache: `index_copy_` at the given positions. Eager runs and the tests'
    references use this; the ExecuTorch export swaps in qwen35::kv_cache_update (export/transforms/kv_cache.py)."""

    def forward(self, cache: torch.Tensor, new: torch.Tensor, input_pos: torch.Tensor) -> None:
        """cache [B,Hkv,S,D] <- new [B,Hkv,T,D] at slots input_pos [T], in the cache's dtype."""
        cache.index_copy_(2, input_pos, new.to(cache.dtype))


class Qwen35Attention(nn.Module):
    """Gated full attention: q/k norms, partial NeoX RoPE, GQA over a static KV cache, sigmoid output gate."""

    def __init__(self, config: Qwen35Config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rotary_dim = config.rotary_dim
        h = config.hidden_size
        # q_proj carries query and output gate interleaved per head: [q_0 | gate_0 | q_1 | gate_1 | ...].
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim * 2, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=False)
        self.q_norm = Qwen35RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen35RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.cache_write = CacheWrite()

    def project(self, x: torch.Tensor):
        """x [B,T,h] -> query|gate [B,T,Hq*2D], k [B,T,Hkv*D], v [B,T,Hkv*D] (export fuses these linears)."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def setup_state(self, batch_size: int, max_seq_len: int, dtype: torch.dtype) -> None:
        shape = (batch_size, self.num_kv_heads, max_seq_len, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """NeoX half-split rotation of the first rotary_dim dims; the rest pass through. x: [B,H,T,D]; cos/sin [T,R]."""
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim:]
        half = self.rotary_dim // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        return torch.cat([rot * cos + rotated * sin, rest], dim=-1)

    def heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B,T,h], cos/sin [T,R] -> q [B,Hq,T,D], k and v [B,Hkv,T,D] (q, k normed and rotated), gate [B,T,Hq*D].

        With `output`, the layer's math outside the cache, for graphs that keep the cache elsewhere (Core ML)."""
        b, t, _ = x.shape
        qg, k, v = self.project(x)
        qg = qg.reshape(b, t, self.num_heads, 2 * self.head_dim)  # [B,T,Hq,2D]
        q, gate = qg[..., : self.head_dim], qg[..., self.head_dim:]  # [B,T,Hq,D] each
        gate = gate.reshape(b, t, self.num_heads * self.head_dim)  # [B,T,Hq*D]
        q = self.q_norm(q).transpose(1, 2)  # [B,Hq,T,D]
        k = self.k_norm(k.reshape(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)  # [B,Hkv,T,D]
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B,Hkv,T,D]
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        return q, k, v, gate

    def output(self, attn: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """attn, gate [B,T,Hq*D] -> [B,T,h]: the sigmoid output gate, then o_proj."""
        return self.o_proj(attn * torch.sigmoid(gate))

    def forward(self, x, input_pos, cos, sin, mask) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v, gate = self.heads(x, cos, sin)
        self.cache_write(self.k_cache, k, input_pos)
        self.cache_write(self.v_cache, v, input_pos)
        # GQA without repeating the cache: query head i reads kv head i // G, so the G query heads of one kv head
        # are folded into its rows (t-major: row t*G + g) and attend to that kv head together. Batched 3-D matmuls
        # and t-major folding keep every shape guard provable under a dynamic T.
        group = self.num_heads // self.num_kv_heads
        bh = b * self.num_kv_heads
        q = q.transpose(1, 2).reshape(b, t, self.num_kv_heads, group, self.head_dim)  # [B,T,Hkv,G,D]
        q = q.permute(0, 2, 1, 3, 4).reshape(bh, t * group, self.head_dim)  # [B*Hkv,T*G,D]
        keys = self.k_cache.to(q.dtype).reshape(bh, -1, self.head_dim)  # [B*Hkv,S,D]
        values = self.v_cache.to(q.dtype).reshape(bh, -1, self.head_dim)  # [B*Hkv,S,D]
        scores = torch.bmm(q, keys.transpose(1, 2)) * self.head_dim ** -0.5 + mask  # [B*Hkv,T*G,S]; mask [T*G,S]
        attn = torch.bmm(torch.softmax(scores.float(), dim=-1).to(q.dtype), values)  # [B*Hkv,T*G,D]
        attn = attn.reshape(b, self.num_kv_heads, t, group, self.head_dim)  # [B,Hkv,T,G,D]
        attn = attn.permute(0, 2, 1, 3, 4)  # [B,T,Hkv,G,D] = [B,T,Hq,D] in head order
        attn = attn.reshape(b, t, self.num_heads * self.head_dim)  # [B,T,Hq*D]
        return self.output(attn, gate)


class Qwen35DecoderLayer(nn.Module):
    def __init__(self, config: Qwen35Config, layer_type: str, gdn_impl: str):
        super().__init__()
        self.layer_type = layer_type
        if layer_type == "linear_attention":
            self.linear_attn = Qwen35GatedDeltaNet(config, gdn_impl)
        else:
            self.self_attn = Qwen35Attention(config)
        self.mlp = Qwen35MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = Qwen35RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen35RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, input_pos, cos, sin, mask):
        h = self.input_layernorm(x)
        if self.layer_type == "linear_attention":
            h = self.linear_attn(h)
        else:
            h = self.self_attn(h, input_pos, cos, sin, mask)
        return self.residual(x, h)

    def residual(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """x, mixed [B,T,h] -> [B,T,h]: the layer after its mixer (mixed = mixer(input_layernorm(x))), for graphs
        that run the mixer over explicit state: add it, then the MLP block."""
        x = x + mixed
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen35Model(nn.Module):
    def __init__(self, config: Qwen35Config, gdn_impl: str):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen35DecoderLayer(config, lt, gdn_impl) for lt in config.layer_types)
        self.norm = Qwen35RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class Qwen35ForCausalLM(nn.Module):
    """Qwen3.5 text decoder with fixed-size state for export.

    forward(tokens [B,T] int64, input_pos [T] int64) -> logits [B,T,vocab] (float32 unless the model is cast).
    """

    def __init__(self, config: Qwen35Config, *, max_seq_len: int | None = None, max_batch_size: int = 1,
                 gdn_impl: str = "op", dtype: torch.dtype = torch.float32):
        super().__init__()
        max_seq_len = default_max_seq_len(config) if max_seq_len is None else max_seq_len
        if gdn_impl not in IMPLS:
            raise ValueError(f"gdn_impl={gdn_impl!r}; expected one of {IMPLS}")
        if max_seq_len > config.max_position_embeddings:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's max_position_embeddings="
                             f"{config.max_position_embeddings}")
        self.config = config
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self.model = Qwen35Model(config, gdn_impl)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # stored once
        self.setup_caches(max_batch_size, max_seq_len, dtype)

    @property
    def gdn_impl(self) -> str:
        return next((m.gdn_impl for m in self.modules() if isinstance(m, Qwen35GatedDeltaNet)), "op")

    def set_gdn_impl(self, impl: str) -> "Qwen35ForCausalLM":
        if impl not in IMPLS:
            raise ValueError(f"gdn_impl={impl!r}; expected one of {IMPLS}")
        for m in self.modules():
            if isinstance(m, Qwen35GatedDeltaNet):
                m.gdn_impl = impl
        return self

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None) -> None:
        """(Re)allocate every state buffer and the RoPE tables on the CPU. Cache dtype defaults to the weights'."""
        cfg = self.config
        if dtype is None:
            dtype = self.model.norm.weight.dtype
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        for layer in self.model.layers:
            if layer.layer_type == "linear_attention":
                layer.linear_attn.setup_state(max_batch_size, dtype)
            else:
                layer.self_attn.setup_state(max_batch_size, max_seq_len, dtype)
        rot = cfg.rotary_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))  # [R/2]
        # Text-only mRoPE: the T, H and W rows are equal, so it is plain 1-D RoPE over all positions.
        freqs = torch.arange(max_seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [S,R/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [S,R]
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)

    @torch.no_grad()
    def reset(self) -> None:
        """Zero every state: KV caches, conv states, recurrent states."""
        for name, buf in self.named_buffers():
            if name.endswith(("_cache", "_state")):
                buf.zero_()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self._check_inputs(tokens, input_pos)
        x = self.model.embed_tokens(tokens)  # [B,T,h]
        cos = self.rope_cos[input_pos].to(x.dtype)  # [T,R]
        sin = self.rope_sin[input_pos].to(x.dtype)
        return self._decoder(x, input_pos, cos, sin)

    def forward_embeddings(self, embeds: torch.Tensor, input_pos: torch.Tensor,
                           rope_pos: torch.Tensor) -> torch.Tensor:
        """Multimodal forward: embeds [B,T,h] (token embeddings with image embeddings in the image slots, see
        vision_language.py), input_pos [T] cache slots, rope_pos [3,T] int64 M-RoPE positions (rows T, H, W; shared by
        the batch) -> logits [B,T,vocab].

        Cache slots and rotary positions part ways once an image is in the sequence: an image of h x w merged tokens
        fills h*w slots but advances the rotary position by max(h, w) (transformers' get_rope_index). With the three
        rows equal to input_pos this is `forward(tokens, input_pos)` on the tokens' embeddings.
        """
        if not torch.compiler.is_compiling():
            self._check_embedding_inputs(embeds, input_pos, rope_pos)
        cos, sin = self.mrope_cos_sin(rope_pos)
        return self._decoder(embeds, input_pos, cos.to(embeds.dtype), sin.to(embeds.dtype))

    def mrope_cos_sin(self, rope_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleaved M-RoPE tables cos, sin [T,R] (float32) for rope_pos [3,T].

        Frequency slot i (of R/2) turns with the H row if i % 3 == 1 and i < 3 * mrope_section[1], with the W row if
        i % 3 == 2 and i < 3 * mrope_section[2], else with the T row; the R/2 angles are repeated for the NeoX half
        split. The same fp32 products as the 1-D tables of setup_caches, so equal rows give bit-equal tables.
        """
        cfg = self.config
        half = cfg.rotary_dim // 2
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float32) / cfg.rotary_dim))
        rows = [1 if i % 3 == 1 and i < 3 * cfg.mrope_section[1] else 2 if i % 3 == 2 and i < 3 * cfg.mrope_section[2]
                else 0 for i in range(half)]
        pos = rope_pos.float()[torch.tensor(rows, device=rope_pos.device)]  # [R/2,T]: each slot's position row
        freqs = pos.t() * inv_freq[None, :]  # [T,R/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T,R]
        return emb.cos(), emb.sin()

    def _decoder(self, x: torch.Tensor, input_pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B,T,h] at cache slots input_pos [T], rotary tables cos/sin [T,R] -> logits [B,T,vocab]."""
        # Additive causal mask over the whole static cache: a query at position p sees slots 0..p. Rows repeat per
        # query head of a kv group (see Qwen35Attention), built once here for every layer.
        group = self.config.num_attention_heads // self.config.num_key_value_heads
        slots = torch.arange(self.max_seq_len, device=x.device)
        visible = slots[None, :] <= input_pos.repeat_interleave(group)[:, None]  # [T*G,S], row t*G + g
        mask = torch.where(visible, 0.0, float("-inf")).to(x.dtype)  # [T*G,S]
        for layer in self.model.layers:
            x = layer(x, input_pos, cos, sin, mask)
        return self.lm_head(self.model.norm(x))  # [B,T,vocab]

    def _check_embedding_inputs(self, embeds: torch.Tensor, input_pos: torch.Tensor, rope_pos: torch.Tensor) -> None:
        h = self.config.hidden_size
        if embeds.dim() != 3 or embeds.shape[-1] != h or rope_pos.shape != (3, embeds.shape[1]):
            raise ValueError(f"forward_embeddings(embeds [B,T,{h}], input_pos [T], rope_pos [3,T]): got embeds "
                             f"{tuple(embeds.shape)}, input_pos {tuple(input_pos.shape)}, "
                             f"rope_pos {tuple(rope_pos.shape)}")
        self._check_inputs(embeds[..., 0], input_pos)  # [B,T]: batch, length and cache bounds as for tokens

    def _check_inputs(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> None:
        if tokens.dim() != 2 or input_pos.dim() != 1 or tokens.shape[1] != input_pos.shape[0]:
            raise ValueError(f"forward(tokens [B,T], input_pos [T]): got tokens {tuple(tokens.shape)}, "
                             f"input_pos {tuple(input_pos.shape)}")
        if tokens.shape[0] != self.max_batch_size:
            raise ValueError(f"tokens has batch {tokens.shape[0]} but the caches hold max_batch_size="
                             f"{self.max_batch_size}; call setup_caches() to resize")
        if input_pos.numel() and int(input_pos.max()) >= self.max_seq_len:
            raise ValueError(f"position {int(input_pos.max())} is past the cache: max_seq_len={self.max_seq_len} "
                             f"(prompt plus generated tokens must fit; raise max_seq_len)")

    # Loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, max_seq_len: int | None = None,
                        max_batch_size: int = 1, gdn_impl: str = "op",
                        keep_bf16: bool = False) -> "Qwen35ForCausalLM":
        """Load a local Hugging Face folder (CausalLM or ConditionalGeneration, safetensors only). See weights.py."""
        from .weights import load_pretrained

        return load_pretrained(cls, path, dtype=dtype, max_seq_len=max_seq_len, max_batch_size=max_batch_size,
                               gdn_impl=gdn_impl, keep_bf16=keep_bf16)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "Qwen35ForCausalLM":
        """Random-initialised model of a preset shape (tests and benchmarks)."""
        return cls(Qwen35Config.from_preset(name), **kwargs)

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
        """Greedy generation from a fresh state: one prefill call, then one call per token."""
        if len(prompt) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_seq_len={self.max_seq_len}")
        self.reset()
        tokens = torch.tensor([prompt])
        logits = self(tokens, torch.arange(len(prompt)))
        out: list[int] = []
        for i in range(max_new_tokens):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt in stop_ids:
                break
            logits = self(torch.tensor([[nxt]]), torch.tensor([len(prompt) + i]))
        return out
