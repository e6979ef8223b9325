"""Our vision tower (models/vision.py) vs transformers' Qwen3_5VisionModel on random tiny checkpoints, and its loader.

The tiny VLM builders here are shared with test_vision_pipeline.py.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import perturb_small_params, tiny_text_config
from qwen_mobile.models import CheckpointError, ConfigError, Qwen35ForCausalLM
from qwen_mobile.models.config import Qwen35VisionConfig
from qwen_mobile.models.vision import Qwen35VisionModel

RELATIVE_ATOL = 1e-4  # fp32, issue bound: |ours - ref| <= 1e-4 * max(1, max |ref|). Measured <= 8e-6 relative.

# Two towers: A has head_dim 16 and a 4 x 4 position table; B has head_dim 24 (not a multiple of 8, like the 9B's 72),
# a 6 x 6 table and small 4-pixel patches. Both merge 2 x 2 patches into one text token.
VISION_CONFIGS = {
    "A": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=16),
    "B": dict(depth=3, hidden_size=48, intermediate_size=80, num_heads=2, num_position_embeddings=36, patch_size=4),
}


def vision_config(name: str, out_hidden_size: int) -> dict:
    return dict(VISION_CONFIGS[name], out_hidden_size=out_hidden_size)


@torch.no_grad()
def perturb_vision(visual: torch.nn.Module, seed: int) -> None:
    """LayerNorms start at 1/0, biases at 0 and positions tiny: random ones make offset or order bugs visible. The
    query/key weights are scaled up so attention is far from uniform: with the 0.02 init every score is ~0, and a
    tower with its rotary rows and columns swapped stayed within the bound (measured 5e-5)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in visual.named_parameters():
        if "norm" in name or name.endswith("bias"):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        elif name == "pos_embed.weight":
            p.add_(torch.randn(p.shape, generator=gen))
        elif name.endswith("attn.qkv.weight"):
            p.mul_(50.0)


def make_hf_vlm(vision: str = "A", regime: str = "hv1x", tied: bool = True, seed: int = 0):
    """A tiny Qwen3_5ForConditionalGeneration with tower `vision`, every small parameter perturbed."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(seed)
    # The tiny text config's rotary (8 dims, theta 1e4) turns 0.01 rad per position in its only W slot, too little to
    # tell an image's H and W rows apart; 16 rotary dims at theta 100, sections [3, 3, 2] (interleaved like the
    # releases' [11, 11, 10]) make every row matter.
    rope = dict(rope_type="default", rope_theta=100.0, partial_rotary_factor=0.5, mrope_section=[3, 3, 2],
                mrope_interleaved=True)
    text = tiny_text_config(regime, tied, rope_parameters=rope)
    config = Qwen3_5Config(text_config=text, vision_config=vision_config(vision, text["hidden_size"]),
                           tie_word_embeddings=tied, image_token_id=150, video_token_id=151,
                           vision_start_token_id=152, vision_end_token_id=153)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    perturb_small_params(model, seed)
    perturb_vision(model.model.visual, seed)
    return model


@pytest.fixture(scope="session")
def hf_vlm(tmp_path_factory):
    """Factory: (vision, regime, tied) -> (folder, hf_model), saved with save_pretrained, cached for the session."""
    cache = {}

    def get(vision="A", regime="hv1x", tied=True):
        key = (vision, regime, tied)
        if key not in cache:
            model = make_hf_vlm(vision, regime, tied)
            folder = tmp_path_factory.mktemp(f"vlm-{vision}-{regime}")
            model.save_pretrained(folder)
            cache[key] = (folder, model)
        return cache[key]

    return get


def random_patches(grid_thw, patch_dim: int, seed: int) -> torch.Tensor:
    n = sum(t * h * w for t, h, w in grid_thw)
    return torch.randn(n, patch_dim, generator=torch.Generator().manual_seed(seed))


def assert_relative_close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    bound = RELATIVE_ATOL * max(1.0, ref.abs().max().item())
    torch.testing.assert_close(got, ref, atol=bound, rtol=0, msg=lambda m: f"{what}: {m}")


# Patch grids (frames, rows, columns): the 2 x 2 minimum; wider than tall and taller than wide; bigger than the
# position table (upsampled) and smaller (downsampled); a 1:6 strip; two images at once; a two-frame clip (frames
# attend separately).
GRIDS = [
    pytest.param([(1, 2, 2)], id="one-2x2"),
    pytest.param([(1, 4, 6)], id="one-4x6"),
    pytest.param([(1, 8, 4)], id="one-8x4"),
    pytest.param([(1, 10, 12)], id="one-10x12"),
    pytest.param([(1, 2, 12)], id="one-2x12"),
    pytest.param([(1, 4, 6), (1, 6, 2)], id="two-4x6-6x2"),
    pytest.param([(2, 4, 4)], id="clip-2x4x4"),
]


@pytest.mark.parametrize("grid_thw", GRIDS)
@pytest.mark.parametrize("vision", ["A", "B"])
def test_tower_matches_transformers(hf_vlm, vision, grid_thw):
    folder, hf = hf_vlm(vision)
    ours = Qwen35VisionModel.from_pretrained(folder)
    pixels = random_patches(grid_thw, ours.config.patch_dim, seed=len(grid_thw))
    grid = torch.tensor(grid_thw)
    with torch.no_grad():
        ref = hf.model.visual(pixels, grid_thw=grid).pooler_output
        got = ours(pixels, grid)
    assert got.shape == ref.shape == (pixels.shape[0] // 4, hf.config.text_config.hidden_size)
    assert_relative_close(got, ref, f"tower {vision}, grids {grid_thw}")


def test_layer_norm_is_torch_layer_norm():
    """The export-friendly LayerNorm (statistics over a 4-D view) against F.layer_norm, fp32 and bf16 inputs."""
    from qwen_mobile.models.vision import Qwen35VisionLayerNorm

    gen = torch.Generator().manual_seed(0)
    norm = Qwen35VisionLayerNorm(48)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=gen))
        norm.bias.copy_(torch.randn(48, generator=gen))
    x = 3 * torch.randn(37, 48, generator=gen) + 1
    ref = torch.nn.functional.layer_norm(x, (48,), norm.weight, norm.bias, eps=1e-6)
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(norm(x.bfloat16()).float(), ref, atol=0.05, rtol=0)  # bf16 output rounding only


def test_two_images_equal_each_alone(hf_vlm):
    """Images do not see each other: encoding two at once is encoding each on its own (no cross-image leak)."""
    folder, _ = hf_vlm("A")
    ours = Qwen35VisionModel.from_pretrained(folder)
    grids = [(1, 4, 6), (1, 6, 4)]
    pixels = random_patches(grids, ours.config.patch_dim, seed=5)
    with torch.no_grad():
        both = ours(pixels, grids)
        first, second = ours(pixels[:24], grids[:1]), ours(pixels[24:], grids[1:])
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-6, rtol=0)


def test_position_resize_matches_interpolate(hf_vlm):
    """The separable gather is torch's own bilinear resize (align_corners=True) of the table, in merge-block order:
    checked against F.interpolate directly, not only through the tower."""
    folder, _ = hf_vlm("B")
    ours = Qwen35VisionModel.from_pretrained(folder)
    side = ours.config.num_grid_per_side
    table = ours.pos_embed.weight.reshape(side, side, -1).permute(2, 0, 1)[None]  # [1,D,side,side]
    for h, w in [(2, 2), (4, 10), (12, 8)]:
        ref = torch.nn.functional.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)[0]  # [D,h,w]
        ref = ref.permute(1, 2, 0).reshape(h // 2, 2, w // 2, 2, -1).transpose(1, 2).reshape(h * w, -1)
        torch.testing.assert_close(ours.position_embeddings(h, w), ref, atol=1e-6, rtol=0)


def test_loader_reads_the_tower_only(hf_vlm):
    folder, hf = hf_vlm("A")
    ours = Qwen35VisionModel.from_pretrained(folder)
    # Every tensor of transformers' tower arrived (patch embedding reshaped from the conv kernel).
    ref = {k: v for k, v in hf.model.visual.state_dict().items() if "rotary" not in k}
    got = ours.state_dict()
    assert set(got) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(got[name], tensor.reshape(got[name].shape)), name
    # The text loader still reads the same checkpoint and skips the tower's keys.
    Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=32, gdn_impl="reference")


def test_bf16_checkpoint_loads_as_requested_dtype(hf_vlm, tmp_path):
    """Releases ship bf16: the tower loads in fp32 and computes what transformers' fp32 upcast of it computes."""
    import copy

    folder, hf = hf_vlm("B")
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path)  # a copy: the session fixture is shared
    ours = Qwen35VisionModel.from_pretrained(tmp_path)
    assert ours.patch_embed.proj.weight.dtype == torch.float32
    ref_model = type(hf).from_pretrained(tmp_path, dtype=torch.float32).model.visual
    grids = [(1, 4, 6)]
    pixels = random_patches(grids, ours.config.patch_dim, seed=3)
    with torch.no_grad():
        ref = ref_model(pixels, grid_thw=torch.tensor(grids)).pooler_output
        got = ours(pixels, grids)
    assert_relative_close(got, ref, "bf16 checkpoint")
    ours16 = Qwen35VisionModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert ours16.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


def test_config_reads_the_composite_config(hf_vlm):
    folder, _ = hf_vlm("B")
    cfg = Qwen35VisionConfig.from_json(folder)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.patch_size) == (3, 48, 2, 24, 4)
    assert (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (150, 152, 153)
    assert cfg.num_grid_per_side == 6 and cfg.patch_dim == 3 * 2 * 4 * 4


def test_text_only_checkpoint_has_no_tower(hf_checkpoint):
    folder, _ = hf_checkpoint("causal", "hv1x", True)
    assert Qwen35VisionConfig.from_json(folder) is None
    with pytest.raises(CheckpointError, match="has no vision_config: this checkpoint has no vision tower"):
        Qwen35VisionModel.from_pretrained(folder)


def copy_with(folder, dst, edit_tensors=None, edit_config=None):
    shutil.copytree(folder, dst)
    if edit_tensors:
        tensors = load_file(dst / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    if edit_config:
        raw = json.loads((dst / "config.json").read_text())
        edit_config(raw)
        (dst / "config.json").write_text(json.dumps(raw))
    return dst


def test_unknown_vision_key_fails_loudly(hf_vlm, tmp_path):
    folder, _ = hf_vlm("A")
    dst = copy_with(folder, tmp_path / "extra",
                    lambda t: t.__setitem__("model.visual.deepstack_merger_list.0.norm.weight", torch.ones(128)))
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.visual.deepstack_merger_list.0.norm.weight'"):
        Qwen35VisionModel.from_pretrained(dst)


def test_missing_vision_tensor_fails_loudly(hf_vlm, tmp_path):
    folder, _ = hf_vlm("A")
    dst = copy_with(folder, tmp_path / "missing", lambda t: t.pop("model.visual.blocks.1.attn.qkv.bias"))
    with pytest.raises(CheckpointError, match="tensor 'model.visual.blocks.1.attn.qkv.bias' is missing"):
        Qwen35VisionModel.from_pretrained(dst)


def test_wrong_patch_kernel_shape_fails_loudly(hf_vlm, tmp_path):
    folder, _ = hf_vlm("A")
    dst = copy_with(folder, tmp_path / "shape", edit_config=lambda c: c["vision_config"].update(patch_size=8))
    with pytest.raises(CheckpointError, match=r"'model.visual.patch_embed.proj.weight' has shape \(32, 3, 2, 16, 16\), "
                                              r"expected \(32, 3, 2, 8, 8\)"):
        Qwen35VisionModel.from_pretrained(dst)


@pytest.mark.parametrize("edit,message", [
    (lambda v: v.pop("num_heads"), "required field 'vision_config.num_heads' is missing"),
    (lambda v: v.update(num_position_embeddings=20), "'num_position_embeddings': 20 is not a square"),
    (lambda v: v.update(num_heads=16), r"head_dim=2 \(hidden_size / num_heads\) is not a multiple of 4"),
    (lambda v: v.update(hidden_act="quick_gelu"), "'hidden_act': 'quick_gelu' is not supported"),
    (lambda v: v.update(patch_size=[16, 16]), "'patch_size': \\[16, 16\\] is not an int"),
], ids=["missing-heads", "non-square-table", "head-dim", "activation", "list-patch"])
def test_bad_vision_config_is_named(hf_vlm, tmp_path, edit, message):
    folder, _ = hf_vlm("A")
    dst = copy_with(folder, tmp_path / "cfg", edit_config=lambda c: edit(c["vision_config"]))
    with pytest.raises(ConfigError, match=message):
        Qwen35VisionConfig.from_json(dst)
