"""bf16-stored weights (`keep_bf16` loading) run under `fp32_compute` as the fp32 model of the same values.

The exporter relies on this to take its fp32 reference without ever holding the model in fp32 (a 4B model is 16.8 GB
in fp32, 8.4 GB as stored). References: the same checkpoint loaded fully in fp32 by us, and by transformers.
"""

import pytest
import torch

import qwen_mobile.export.transforms.bf16_weights as bf16_weights
from checkpoints import make_hf_causal_lm
from qwen_mobile.export.transforms import fp32_compute
from qwen_mobile.models import Qwen35ForCausalLM


@pytest.fixture(scope="module", params=[("hv1x", True), ("hv2x", False)], ids=["tied", "own-head"])
def bf16_checkpoint(request, tmp_path_factory):
    regime, tied = request.param
    hf = make_hf_causal_lm(regime, tied, seed=7).to(torch.bfloat16)
    src = tmp_path_factory.mktemp(f"bf16-{regime}")
    hf.save_pretrained(src)
    return src, hf


def prompt_ids() -> torch.Tensor:
    return torch.randint(0, 160, (1, 19), generator=torch.Generator().manual_seed(2))


def test_bf16_tensors_stay_bf16_and_compute_matches_the_fp32_load(bf16_checkpoint, monkeypatch):
    src, hf = bf16_checkpoint
    monkeypatch.setattr(bf16_weights, "HEAD_ROWS_PER_CHUNK", 48)  # 160-token vocab: the chunked head path runs 4 chunks
    stored = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=64, keep_bf16=True)
    full = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=64)
    dtypes = {n: p.dtype for n, p in stored.named_parameters()}
    assert dtypes["model.embed_tokens.weight"] == torch.bfloat16
    assert all(d == torch.float32 for n, d in dtypes.items() if n.endswith(("A_log", "dt_bias")))
    assert all(p.dtype == torch.float32 for p in full.parameters())
    ids = prompt_ids()
    with torch.no_grad(), fp32_compute(stored):
        got = stored(ids, torch.arange(ids.shape[1]))
        got_decode = stored(torch.tensor([[5]]), torch.tensor([ids.shape[1]]))
    want = full(ids, torch.arange(ids.shape[1]))
    want_decode = full(torch.tensor([[5]]), torch.tensor([ids.shape[1]]))
    assert got.dtype == torch.float32
    # Same fp32 values and ops; only the chunked head's GEMM blocking can differ.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_decode, want_decode, atol=1e-6, rtol=0)
    with torch.no_grad():  # independent: transformers' fp32 model of the same bf16 checkpoint
        ref = hf.float()(input_ids=ids, use_cache=False).logits
        hf.to(torch.bfloat16)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_only_the_running_layer_is_fp32_and_everything_is_restored(bf16_checkpoint):
    src, _ = bf16_checkpoint
    model = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=64, keep_bf16=True)
    before = {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()}
    seen = []

    def record(layer_index):
        def hook(module, args):  # registered after fp32_compute's own hook, so it runs after the upcast
            fp32 = [i for i, layer in enumerate(model.model.layers)
                    if any(p.dtype == torch.float32 and p.dim() == 2 for p in layer.parameters())]
            seen.append((layer_index, fp32))
        return hook

    with torch.no_grad(), fp32_compute(model):
        handles = [layer.register_forward_pre_hook(record(i)) for i, layer in enumerate(model.model.layers)]
        ids = prompt_ids()
        model(ids, torch.arange(ids.shape[1]))
        for h in handles:
            h.remove()
    assert seen == [(i, [i]) for i in range(len(model.model.layers))]
    assert {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()} == before
    assert "forward" not in model.lm_head.__dict__


def test_an_error_inside_the_block_still_restores_the_stored_weights(bf16_checkpoint):
    src, _ = bf16_checkpoint
    model = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=64, keep_bf16=True)
    before = {n: p.dtype for n, p in model.named_parameters()}
    boom = model.model.layers[1].mlp.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), fp32_compute(model):
        ids = prompt_ids()
        model(ids, torch.arange(ids.shape[1]))
    boom.remove()
    assert {n: p.dtype for n, p in model.named_parameters()} == before
    assert "forward" not in model.lm_head.__dict__


def test_upcasting_the_whole_model_computes_the_same_and_restores_it(bf16_checkpoint):
    src, _ = bf16_checkpoint
    model = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=64, keep_bf16=True)
    before = {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()}
    ids = prompt_ids()
    with torch.no_grad():
        with fp32_compute(model):
            per_layer = model(ids, torch.arange(ids.shape[1]))
        model.reset()  # the caches and recurrent states carry over between calls
        with fp32_compute(model, upcast_whole_below=1 << 40):
            assert all(p.dtype == torch.float32 for p in model.parameters())
            whole = model(ids, torch.arange(ids.shape[1]))
    torch.testing.assert_close(whole, per_layer, atol=1e-6, rtol=0)
    assert {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()} == before


def test_loading_reads_tensors_into_memory_of_our_own_not_a_file_mapping(bf16_checkpoint):
    """safetensors' get_tensor maps the file, and touched pages of a mapping count in RSS until it is unmapped."""
    src, _ = bf16_checkpoint
    model = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=64, keep_bf16=True)
    mapped = [line for line in open("/proc/self/maps") if str(src) in line]
    assert mapped == []
    stored = {n: p for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    from safetensors import safe_open
    with safe_open(str(src / "model.safetensors"), "pt") as f:  # the same values as safetensors reads them
        want = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert torch.equal(stored["model.layers.0.mlp.down_proj.weight"], want)
