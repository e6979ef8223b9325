"""export/transforms: each rewrite leaves the eager logits as the untransformed model computes them, keeps the
parameter names and order torch.export lifts, and the model file carries none of them."""

from pathlib import Path

import pytest
import torch

from qwen_mobile.export.transforms import fuse_linears, fuse_projections, kv_cache_op, last_position_logits
from qwen_mobile.export.transforms.fuse import FusedAttention, FusedGatedDeltaNet, FusedMLP
from qwen_mobile.models import Qwen35ForCausalLM
from qwen_mobile.models.qwen35 import CacheWrite

LOGITS_ATOL = 1e-4  # fp32 logits vs transformers; the unfused model's bound (tests/models/test_parity_transformers.py)
# Fused vs unfused, same weights: one GEMM over the stacked rows instead of several, so BLAS may block the sums
# differently; measured <= 2.4e-7 on the tiny checkpoints (hv1x, hv2x).
FUSED_ATOL = 1e-5
# The head over the last row alone vs over all T rows: the same dot products, blocked differently by BLAS; measured
# <= 1.5e-7.
LAST_ROW_ATOL = 1e-5


def token_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def prefill_then_decode(model, ids: torch.Tensor, split: int) -> torch.Tensor:
    """Logits [T,vocab]: the first `split` tokens in one call, then one token per call."""
    model.reset()
    rows = [model(ids[:, :split], torch.arange(split))[0]]
    rows += [model(ids[:, i:i + 1], torch.tensor([i]))[0] for i in range(split, ids.shape[1])]
    return torch.cat(rows)


@pytest.mark.parametrize("regime", ["hv1x", "hv2x"])
def test_fused_projections_match_transformers_and_the_unfused_model(hf_checkpoint, regime):
    """The fusion (q/k/v, in_proj_{qkv,z,b,a}, gate/up) changes no logit: prefill then decode, against transformers
    itself at the unfused model's bound, and against the unfused model."""
    folder, hf = hf_checkpoint("causal", regime, True)
    plain = Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=256)
    ours = fuse_projections(Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=256))
    linears = [n for n, m in ours.named_modules() if isinstance(m, torch.nn.Linear)]
    n_layers = ours.config.num_hidden_layers
    assert len(linears) == 4 * n_layers + 1, linears  # 4 per layer + lm_head
    ids = token_ids(20, ours.config.vocab_size, seed=4)
    with torch.no_grad():
        ref = hf(input_ids=ids, use_cache=False).logits.float()[0]  # [20, vocab]
    got = prefill_then_decode(ours, ids, 13)
    torch.testing.assert_close(got, ref, atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(got, prefill_then_decode(plain, ids, 13), atol=FUSED_ATOL, rtol=0)


def test_fusion_keeps_export_names_and_order_and_shares_the_other_weights():
    """Each fused linear is registered after its module's other children (where export lifts it: the .pte depends on
    that order), the replaced linears are gone, everything else is the same tensor, and a second fusion is a no-op."""
    torch.manual_seed(0)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=16)
    before = dict(model.named_parameters())
    fuse_projections(model)
    layers = model.model.layers
    gdn = next(i for i, layer in enumerate(layers) if layer.layer_type == "linear_attention")
    attn = next(i for i, layer in enumerate(layers) if layer.layer_type == "full_attention")
    assert [n for n, _ in layers[gdn].linear_attn.named_parameters()] == [
        "dt_bias", "A_log", "conv1d.weight", "norm.weight", "out_proj.weight", "in_proj.weight"]
    assert [n for n, _ in layers[attn].self_attn.named_parameters()] == [
        "o_proj.weight", "q_norm.weight", "k_norm.weight", "qkv_proj.weight"]
    assert [n for n, _ in layers[attn].mlp.named_parameters()] == ["down_proj.weight", "gate_up_proj.weight"]
    assert {type(layers[gdn].linear_attn), type(layers[attn].self_attn), type(layers[attn].mlp)} == {
        FusedGatedDeltaNet, FusedAttention, FusedMLP}
    after = dict(model.named_parameters())
    for name, p in after.items():
        if not name.endswith(("in_proj.weight", "qkv_proj.weight", "gate_up_proj.weight")):
            assert p is before[name], name
    p = f"model.layers.{attn}.self_attn."
    assert torch.equal(after[p + "qkv_proj.weight"],
                       torch.cat([before[p + n + ".weight"] for n in ("q_proj", "k_proj", "v_proj")]))
    names = list(after)
    fuse_projections(model)
    assert list(dict(model.named_parameters())) == names


def test_fused_rows_quantize_like_the_separate_linears():
    """Group-wise int4 runs along each output row, so a fused weight quantizes to the separate ones' rows, stacked."""
    from qwen_mobile.export.quantize import quantize_weight

    gen = torch.Generator().manual_seed(0)
    parts = [torch.nn.Linear(64, n, bias=False) for n in (48, 16, 2)]
    for p in parts:
        p.weight.data = torch.randn(p.weight.shape, generator=gen)
    fused = fuse_linears(*parts)
    q_fused, s_fused = quantize_weight(fused.weight, 4, 32)
    q_parts, s_parts = zip(*(quantize_weight(p.weight, 4, 32) for p in parts))
    assert torch.equal(q_fused, torch.cat(q_parts)) and torch.equal(s_fused, torch.cat(s_parts))
    with pytest.raises(ValueError, match="bias-free linears over one input width"):
        fuse_linears(torch.nn.Linear(64, 8, bias=False), torch.nn.Linear(32, 8, bias=False))


def test_kv_cache_op_writes_what_index_copy_writes_and_is_undone():
    """Under kv_cache_op the caches fill through qwen35::kv_cache_update (the export graph names it) with the same
    rows index_copy_ writes, so logits are bit-equal; on exit every attention layer has its own write back."""
    torch.manual_seed(0)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=32).eval()
    ids = token_ids(12, model.config.vocab_size, seed=1)
    plain = prefill_then_decode(model, ids, 7)
    plain_caches = {n: b.clone() for n, b in model.named_buffers() if n.endswith(("k_cache", "v_cache"))}
    writes = [m.cache_write for m in model.modules() if hasattr(m, "cache_write")]
    with kv_cache_op(model):
        got = prefill_then_decode(model, ids, 7)
        caches = {n: b.clone() for n, b in model.named_buffers() if n.endswith(("k_cache", "v_cache"))}
        with torch.no_grad():
            model.reset()
            ep = torch.export.export(model, (ids[:, :4], torch.arange(4)), strict=False)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert sum("kv_cache_update" in t for t in targets) == 2 * model.config.num_full_layers  # keys and values
    assert not [t for t in targets if "index_copy" in t or "index_put" in t], targets
    assert torch.equal(got, plain)
    assert caches.keys() == plain_caches.keys() and all(torch.equal(caches[n], plain_caches[n]) for n in caches)
    assert [m.cache_write for m in model.modules() if hasattr(m, "cache_write")] == writes
    assert all(type(w) is CacheWrite for w in writes)


def test_last_position_logits_are_the_last_row_and_the_norm_comes_back():
    torch.manual_seed(0)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=32).eval()
    ids = token_ids(9, model.config.vocab_size, seed=2)
    norm = model.model.norm
    with torch.no_grad():
        model.reset()
        full = model(ids, torch.arange(9))  # [1,9,vocab]
        model.reset()
        with last_position_logits(model):
            last = model(ids, torch.arange(9))  # [1,1,vocab]
            model.reset()
            with last_position_logits(model, keep=3):
                last3 = model(ids, torch.arange(9))  # [1,3,vocab]
            assert model.model.norm.keep == 1
    assert last.shape == (1, 1, full.shape[-1]) and last3.shape == (1, 3, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:], atol=LAST_ROW_ATOL, rtol=0)
    torch.testing.assert_close(last3, full[:, -3:], atol=LAST_ROW_ATOL, rtol=0)
    assert model.model.norm is norm
    with pytest.raises(RuntimeError, match="boom"), last_position_logits(model):
        raise RuntimeError("boom")
    assert model.model.norm is norm
    with pytest.raises(ValueError, match="keep=0"), last_position_logits(model, keep=0):
        pass


def test_the_model_file_carries_no_export_switches():
    """Export rewrites live in export/transforms/: the model file neither names them nor loads our runtime ops."""
    import qwen_mobile.models.qwen35 as qwen35

    source = Path(qwen35.__file__).read_text()
    for switch in ("logits_to_keep", "kv_write", "set_kv_write", "fuse_projections", "fuse_linears", "fp32_compute",
                   "native_op", "qwen_mobile.export", "qwen_mobile.runtime"):
        assert switch not in source, switch
    for attr in ("set_kv_write", "fuse_projections", "logits_to_keep"):
        assert not hasattr(Qwen35ForCausalLM, attr), attr
