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
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen35Config
from .gated_delta import IMPLS, gated_delta_rule, native_op


DEFAULT_MAX_SEQ_LEN = 2048
# How attention layers write new keys and values into their caches: "index_copy" (cache.index_copy_, eager and Core
# ML) or "op" (qwen35::kv_cache_update, which ExecuTorch runs in place; runtime/state_ops.py says why).
KV_WRITES = ("index_copy", "op")


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


def fuse_linears(*linears: nn.Linear) -> nn.Linear:
    """One Linear whose output rows are the given linears' rows, in order (same input, no bias).

    Exact under every quantization scheme we use: int4 groups and int8 channels run along each output row's inputs,
    so a row is quantized the same wherever it sits. The exported graph gets one GEMM, one activation quantization
    and one delegate op where it had several.
    """
    if any(m.bias is not None for m in linears) or len({m.in_features for m in linears}) != 1:
        raise ValueError("fuse_linears: expected bias-free linears over one input width")
    fused = nn.Linear(linears[0].in_features, sum(m.out_features for m in linears), bias=False)
    fused.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears], dim=0), requires_grad=False)
    return fused


class Qwen35MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.intermediate = intermediate
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up_proj = None  # set by fuse_projections()

    def fuse_projections(self) -> None:
        self.gate_up_proj = fuse_linears(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate_up = self.gate_up_proj(x)  # [B,T,2I]
        i = self.intermediate
        return self.down_proj(F.silu(gate_up[..., :i]) * gate_up[..., i:])


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
        self.in_proj = None  # in_proj_qkv|z|b|a fused by fuse_projections()

    def fuse_projections(self) -> None:
        self.in_proj = fuse_linears(self.in_proj_qkv, self.in_proj_z, self.in_proj_b, self.in_proj_a)
        del self.in_proj_qkv, self.in_proj_z, self.in_proj_b, self.in_proj_a

    def _project(self, x: torch.Tensor):
        """x [B,T,h] -> mixed [B,T,conv_dim], z [B,T,Hv*V], b [B,T,Hv], a [B,T,Hv]."""
        if self.in_proj is None:
            return self.in_proj_qkv(x), self.in_proj_z(x), self.in_proj_b(x), self.in_proj_a(x)
        y = self.in_proj(x)  # [B,T,conv_dim + Hv*V + 2*Hv]
        c, zv, hv = self.conv_dim, self.value_dim, self.num_v_heads
        return y[..., :c], y[..., c:c + zv], y[..., c + zv:c + zv + hv], y[..., c + zv + hv:]

    def setup_state(self, batch_size: int, dtype: torch.dtype) -> None:
        # 3 raw columns suffice for a width-4 filter; transformers keeps 4.
        conv = torch.zeros(batch_size, self.conv_dim, self.conv_kernel_size - 1, dtype=dtype)
        rec = torch.zeros(batch_size, self.num_v_heads, self.head_k_dim, self.head_v_dim, dtype=torch.float32)
        self.register_buffer("conv_state", conv, persistent=False)
        self.register_buffer("recurrent_state", rec, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        mixed, z, b_proj, a_proj = self._project(x)
        mixed = mixed.transpose(1, 2)  # [B,conv_dim,T]
        beta = b_proj.float().sigmoid()  # [B,T,Hv]
        # fp32 island: exp(A_log) overflows in fp16.
        g = -self.A_log.float().exp() * softplus(a_proj.float() + self.dt_bias.float())  # [B,T,Hv]

        window = torch.cat([self.conv_state, mixed.to(self.conv_state.dtype)], dim=-1)  # [B,conv_dim,K-1+T]
        self.conv_state.copy_(window[:, :, -(self.conv_kernel_size - 1):])
        conv = F.conv1d(window.to(self.conv1d.weight.dtype), self.conv1d.weight, groups=self.conv_dim)  # [B,conv_dim,T]
        mixed = F.silu(conv).to(x.dtype).transpose(1, 2)  # [B,T,conv_dim]

        q, k, v = torch.split(mixed, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(b, t, self.num_k_heads, self.head_k_dim)  # [B,T,Hk,K]
        k = k.reshape(b, t, self.num_k_heads, self.head_k_dim)  # [B,T,Hk,K]
        v = v.reshape(b, t, self.num_v_heads, self.head_v_dim)  # [B,T,Hv,V]
        out = gated_delta_rule(q, k, v, g, beta, self.recurrent_state, impl=self.gdn_impl)  # [B,T,Hv,V]

        out = self.norm(out.reshape(b, t, self.num_v_heads, self.head_v_dim),
                        z.reshape(b, t, self.num_v_heads, self.head_v_dim))  # [B,T,Hv,V]
        return self.out_proj(out.reshape(b, t, self.value_dim))  # [B,T,h]


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
        self.qkv_proj = None  # q|k|v fused by fuse_projections()
        self.kv_write = "index_copy"

    def fuse_projections(self) -> None:
        self.qkv_proj = fuse_linears(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def _project(self, x: torch.Tensor):
        """x [B,T,h] -> query|gate [B,T,Hq*2D], k [B,T,Hkv*D], v [B,T,Hkv*D]."""
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        y = self.qkv_proj(x)  # [B,T,Hq*2D + 2*Hkv*D]
        nq, nkv = self.num_heads * self.head_dim * 2, self.num_kv_heads * self.head_dim
        return y[..., :nq], y[..., nq:nq + nkv], y[..., nq + nkv:]

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

    def forward(self, x, input_pos, cos, sin, mask) -> torch.Tensor:
        b, t, _ = x.shape
        qg, k, v = self._project(x)
        qg = qg.reshape(b, t, self.num_heads, 2 * self.head_dim)  # [B,T,Hq,2D]
        q, gate = qg[..., : self.head_dim], qg[..., self.head_dim:]  # [B,T,Hq,D] each
        gate = gate.reshape(b, t, self.num_heads * self.head_dim)  # [B,T,Hq*D]
        q = self.q_norm(q).transpose(1, 2)  # [B,Hq,T,D]
        k = self.k_norm(k.reshape(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)  # [B,Hkv,T,D]
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B,Hkv,T,D]
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)

        if self.kv_write == "op":
            update = native_op("kv_cache_update", "or set_kv_write('index_copy') for an eager-only run")
            update(self.k_cache, k.to(self.k_cache.dtype), input_pos)
            update(self.v_cache, v.to(self.v_cache.dtype), input_pos)
        else:
            self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
            self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
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
        return self.o_proj(attn * torch.sigmoid(gate))


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
        x = x + h
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
        self.logits_to_keep = 0  # 0: logits for every position; K > 0: for the last K only (set by export)
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

    def set_kv_write(self, kv_write: str) -> "Qwen35ForCausalLM":
        """How every attention layer writes its KV cache (KV_WRITES); the exporter picks "op"."""
        if kv_write not in KV_WRITES:
            raise ValueError(f"kv_write={kv_write!r}; expected one of {KV_WRITES}")
        for m in self.modules():
            if isinstance(m, Qwen35Attention):
                m.kv_write = kv_write
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
    def fuse_projections(self) -> "Qwen35ForCausalLM":
        """Merge the linears that read the same input: delta-net in_proj_{qkv,z,b,a}, attention q/k/v, MLP gate/up.

        For export: the 0.8B layers' 186 linears become 96 (lm_head aside), so the graph has fewer quantize and
        GEMM nodes to lower and run. The math is unchanged (fuse_linears); loading and the transformers names are
        unaffected because fusion happens after loading.
        """
        for layer in self.model.layers:
            (layer.linear_attn if layer.layer_type == "linear_attention" else layer.self_attn).fuse_projections()
            layer.mlp.fuse_projections()
        return self

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
        the batch) -> logits [B,T or K,vocab].

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
        """x [B,T,h] at cache slots input_pos [T], rotary tables cos/sin [T,R] -> logits [B,T or K,vocab]."""
        # Additive causal mask over the whole static cache: a query at position p sees slots 0..p. Rows repeat per
        # query head of a kv group (see Qwen35Attention), built once here for every layer.
        group = self.config.num_attention_heads // self.config.num_key_value_heads
        slots = torch.arange(self.max_seq_len, device=x.device)
        visible = slots[None, :] <= input_pos.repeat_interleave(group)[:, None]  # [T*G,S], row t*G + g
        mask = torch.where(visible, 0.0, float("-inf")).to(x.dtype)  # [T*G,S]
        for layer in self.model.layers:
            x = layer(x, input_pos, cos, sin, mask)
        if self.logits_to_keep:
            # Prefill only needs the next-token logits: skipping the others saves T-1 rows of the vocab matmul.
            x = x[:, -self.logits_to_keep:]  # [B,K,h]
        return self.lm_head(self.model.norm(x))  # [B,T or K,vocab]

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


HEAD_ROWS_PER_CHUNK = 16384  # vocab rows of a bf16 lm_head upcast at a time (the 4B table is 2.5 GB in fp32)


@contextmanager
def fp32_compute(model: Qwen35ForCausalLM, upcast_whole_below: int = 0):
    """Run a model whose weights are partly stored in bfloat16 (`keep_bf16` loading) as the fp32 model of the same
    values: bf16 -> fp32 is exact, so inside this block it computes what the model loaded in fp32 computes, while only
    one layer's weights exist in fp32 at a time. Activations and state must be fp32 (load with dtype=float32).

    Each decoder layer and the final norm upcast their bf16 parameters on entry and put the stored tensors back on
    exit. The embedding gathers bf16 rows and upcasts them (exact). A bf16 lm_head runs as an fp32 matmul over
    HEAD_ROWS_PER_CHUNK vocab rows at a time, so the tied table is never upcast whole.

    upcast_whole_below: when the fp32 copy of every bf16 parameter is smaller than this many bytes, upcast them all
    once on entry instead (a step then costs no conversions: the 0.8B gate runs 33 steps at 3 GB each).
    """
    low = [p for p in model.parameters() if p.dtype == torch.bfloat16]
    if not low:
        yield model
        return
    if sum(p.numel() for p in low) * 4 < upcast_whole_below:
        kept = [(p, p.data) for p in low]
        try:
            for p, data in kept:
                p.data = data.float()
            yield model
        finally:
            for p, data in kept:
                p.data = data
        return
    stored: dict[nn.Module, list[tuple[nn.Parameter, torch.Tensor]]] = {}

    def restore(module):
        for p, data in stored.pop(module, ()):
            p.data = data

    def upcast(module, args):
        restore(module)
        stored[module] = [(p, p.data) for p in module.parameters() if p.dtype == torch.bfloat16]
        for p, data in stored[module]:
            p.data = data.float()

    handles = []
    for module in (*model.model.layers, model.model.norm):
        handles.append(module.register_forward_pre_hook(upcast))
        handles.append(module.register_forward_hook(lambda m, args, out: restore(m)))
    handles.append(model.model.embed_tokens.register_forward_hook(lambda m, args, out: out.float()))
    head = model.lm_head
    if head.weight.dtype == torch.bfloat16:
        def head_fp32(x: torch.Tensor) -> torch.Tensor:  # x [..., h] -> [..., vocab]
            w = head.weight  # [vocab, h]
            out = x.new_empty(*x.shape[:-1], w.shape[0])
            for r in range(0, w.shape[0], HEAD_ROWS_PER_CHUNK):
                out[..., r:r + HEAD_ROWS_PER_CHUNK] = F.linear(x, w[r:r + HEAD_ROWS_PER_CHUNK].float())
            return out if head.bias is None else out + head.bias.float()

        head.forward = head_fp32  # an instance attribute: shadows nn.Linear.forward until deleted below
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in list(stored):
            restore(module)
        head.__dict__.pop("forward", None)
