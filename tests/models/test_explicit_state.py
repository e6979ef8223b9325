"""The explicit-state entry points (what the Core ML graph calls) compute what the buffer-state forward computes.

Reference: the stock model's own forward on its buffers. Both paths run the same ops on the same values, so the
bound is exact equality; the delta rule is the fp32 token-loop reference on both sides.
"""

import torch

from qwen_mobile.models import Qwen35ForCausalLM
from qwen_mobile.models.gated_delta import gated_delta_rule


def functional_reference_rule(q, k, v, g, beta, state):
    """(out, next state) without touching `state`: the in-place reference applied to a copy."""
    next_state = state.clone()
    return gated_delta_rule(q, k, v, g, beta, next_state, impl="recurrent"), next_state


@torch.no_grad()
def test_layers_over_explicit_state_match_the_buffer_forward():
    """Every layer, prefill (T=6) then decode (T=1) from the state the prefill left: the delta-net's forward_state
    returns the output and the conv/recurrent states the buffers end up with; attention's heads/output around the
    layer's own cache attention and DecoderLayer.residual rebuild the layer's output."""
    torch.manual_seed(0)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=16, gdn_impl="recurrent").eval()
    model.reset()
    h = model.config.hidden_size
    for layer in model.model.layers:
        if layer.layer_type != "linear_attention":
            continue
        gdn = layer.linear_attn
        conv, rec = gdn.conv_state.clone(), gdn.recurrent_state.clone()
        for t in (6, 1):
            x = torch.randn(1, t, h)
            y_state, conv, rec = gdn.forward_state(layer.input_layernorm(x), conv, rec, functional_reference_rule)
            y = layer(x, None, None, None, None)
            assert torch.equal(layer.residual(x, y_state), y)
            assert torch.equal(conv, gdn.conv_state) and torch.equal(rec, gdn.recurrent_state)
            assert rec.abs().sum() > 0  # the state moved, so the comparison says something


@torch.no_grad()
def test_attention_heads_and_output_rebuild_the_layer():
    torch.manual_seed(1)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=16).eval()
    model.reset()
    layer = next(layer for layer in model.model.layers if layer.layer_type == "full_attention")
    attn = layer.self_attn
    pos = torch.arange(5)
    x = torch.randn(1, 5, model.config.hidden_size)
    cos, sin = model.rope_cos[pos], model.rope_sin[pos]
    group = attn.num_heads // attn.num_kv_heads
    visible = torch.arange(model.max_seq_len)[None, :] <= pos.repeat_interleave(group)[:, None]  # [T*G,S]
    mask = torch.where(visible, 0.0, float("-inf"))
    want = attn(x, pos, cos, sin, mask)
    q, k, v, gate = attn.heads(x, cos, sin)  # q [1,Hq,T,D], k/v [1,Hkv,T,D]
    assert torch.equal(attn.k_cache[:, :, :5], k) and torch.equal(attn.v_cache[:, :, :5], v)
    # Plain GQA over the rows just written (no cache folding): an independent form of the layer's attention.
    keys = k.repeat_interleave(group, dim=1)  # [1,Hq,T,D]
    values = v.repeat_interleave(group, dim=1)
    scores = q @ keys.transpose(-1, -2) * attn.head_dim ** -0.5 + torch.triu(torch.full((5, 5), float("-inf")), 1)
    out = (torch.softmax(scores, -1) @ values).transpose(1, 2).reshape(1, 5, -1)  # [1,T,Hq*D]
    torch.testing.assert_close(attn.output(out, gate), want, atol=1e-5, rtol=0)  # fp32, different reduction order
