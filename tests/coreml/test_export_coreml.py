"""export_coreml end to end: a verified bundle, the saved package's spec, and its numbers from the numpy evaluator
against the stock eager model (an implementation the Core ML graph shares no code path with for the delta rule)."""

from __future__ import annotations

import numpy as np
import pytest

import torch

from qwen_mobile.runtime import bundle

# The fp32 program against eager fp32 with fp16 attention caches (the state dtype Core ML imposes).
FP32_REL_TOL = 1e-4
SMALL = dict(max_seq_len=64, prefill_chunk=16, progress=False)


def _export(source, out, **kw):
    from qwen_mobile.export import export

    return export(str(source), out, recipe="coreml", **{**SMALL, **kw})


@pytest.mark.parametrize("regime", ["hv1x", "hv2x"])
def test_fp32_bundle_matches_eager(hf_checkpoint, tmp_path, regime):
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.export.coreml.graph import fp16_kv
    from qwen_mobile.export.coreml.runner import evaluator_runner
    from qwen_mobile.models import Qwen35ForCausalLM

    folder, _ = hf_checkpoint("causal", regime)
    out = tmp_path / "bundle"
    manifest = _export(folder, out, qlinear="fp32")

    # The manifest is valid, lists the package's files one by one, and their hashes hold.
    assert bundle.load_manifest(out) == manifest
    assert any(name.startswith("model.mlpackage/") and name.endswith("weight.bin") for name in manifest["files"])
    assert manifest["recipe"]["name"] == "coreml" and manifest["verification"]["passed"]
    assert [b["storage"] for b in manifest["state"]["buffers"]] == ["coreml_state", "host_io", "host_io"]

    # Independently of the export's own gate: run the saved package on a fresh prompt, prefill chunk + decode tail.
    mil = MILModel(out / "model.mlpackage")
    assert sorted(mil.functions) == ["decode", "prefill"]
    assert {n: (s, d.__name__) for n, (s, d) in mil.state_specs().items()} == {
        "kv_cache": (tuple(manifest["state"]["buffers"][0]["shape"]), "float16")}
    shapes = {b["name"]: tuple(b["shape"]) for b in manifest["state"]["buffers"]}
    runner = evaluator_runner(mil, prefill_chunk=16, gdn_layout="io",
                              io_shapes={n: shapes[n] for n in ("gdn_conv", "gdn_rec")})
    ref = fp16_kv(Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=64)).set_gdn_impl("reference")
    ref.reset()
    prompt = torch.randint(0, ref.config.vocab_size, (37,), generator=torch.Generator().manual_seed(7)).tolist()
    got = [runner.prefill(prompt, 0)]
    want = [ref(torch.tensor([prompt]), torch.arange(len(prompt)))[0, -1]]
    for pos in range(len(prompt), len(prompt) + 5):
        token = int(want[-1].argmax())
        got.append(runner.decode(token, pos))
        want.append(ref(torch.tensor([[token]]), torch.tensor([pos]))[0, -1])
    got, want = torch.stack(got), torch.stack(want)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel <= FP32_REL_TOL, f"{regime}: max logit error {rel:.3g} of max |logit|"


@pytest.fixture(scope="module")
def tiny_fp32_bundle(hf_checkpoint, tmp_path_factory):
    folder, _ = hf_checkpoint("causal", "hv2x")
    out = tmp_path_factory.mktemp("coreml") / "bundle"
    return out, _export(folder, out, qlinear="fp32")


def test_tampered_package_is_rejected(tiny_fp32_bundle, tmp_path):
    import shutil

    src, manifest = tiny_fp32_bundle
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    weight = next(name for name in manifest["files"] if name.endswith("weight.bin"))
    data = bytearray((out / weight).read_bytes())
    data[-1] ^= 0xFF
    (out / weight).write_bytes(bytes(data))
    with pytest.raises(bundle.BundleError, match="sha256"):
        bundle.load_manifest(out)


def test_mac_verify_script_path_with_the_evaluator(tiny_fp32_bundle, hf_checkpoint):
    """scripts/verify_coreml_on_mac.py's logic, with the numpy evaluator standing in for MLModel.predict."""
    from qwen_mobile.export.coreml.mac_verify import main, verify

    from qwen_mobile.export.coreml.plan import verification_prompt
    from qwen_mobile.export.coreml.graph import fp16_kv
    from qwen_mobile.export.verify import eager_reference
    from qwen_mobile.models import Qwen35ForCausalLM

    out, manifest = tiny_fp32_bundle
    report = verify(out, backend="evaluator", steps=4)
    # The bound the script's gate states, 1e-4 x max(1, max |logit|), with max |logit| from eager on the same prompt.
    folder, _ = hf_checkpoint("causal", "hv2x")
    eager = fp16_kv(Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=64)).set_gdn_impl("reference")
    prompt = verification_prompt(eager.config.vocab_size, None, manifest["program"]["methods"]["forward"]["max_tokens"])
    max_logit = float(eager_reference(eager, prompt, steps=4).logits.abs().max())
    assert report["passed"] and report["max_abs_logit_diff"] <= FP32_REL_TOL * max(1.0, max_logit), (report, max_logit)
    assert main([str(out), "--backend", "evaluator", "--steps", "2"]) == 0


@pytest.mark.parametrize("kwargs, flag", [
    (dict(qlinear="8da4w"), "--qlinear"),
    (dict(gdn_layout="fp8"), "--gdn-layout"),
    (dict(prefill_chunk=1), "--prefill-chunk"),
    (dict(prefill_chunk=128, max_seq_len=64), "--prefill-chunk"),
    (dict(max_seq_len=100000), "--max-seq-len"),
    (dict(qlinear="fp32", head_fp32=True), "--head-fp32"),
])
def test_bad_arguments_name_the_flag(hf_checkpoint, tmp_path, kwargs, flag):
    folder, _ = hf_checkpoint("causal", "hv2x")
    with pytest.raises(ValueError, match=flag):
        _export(folder, tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()


def test_existing_out_needs_force(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("causal", "hv2x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        _export(folder, tmp_path / "taken", qlinear="fp32")


@pytest.mark.slow
@pytest.mark.parametrize("qlinear", ["fp16", "8w", "4w"])
@pytest.mark.parametrize("regime", ["hv1x", "hv2x"])
def test_tiny_quantized_recipes(hf_checkpoint, tmp_path, regime, qlinear):
    folder, _ = hf_checkpoint("causal", regime)
    manifest = _export(folder, tmp_path / "b", qlinear=qlinear)
    assert manifest["verification"]["passed"] and manifest["recipe"]["qlinear"] == qlinear
    ops = manifest["program"]["graph"]["decode"]["ops"]
    if qlinear == "4w":
        assert "constexpr_blockwise_shift_scale" in ops, ops
    if qlinear == "8w":
        assert any(op.startswith("constexpr_") for op in ops), ops


@pytest.mark.slow
@pytest.mark.parametrize("qlinear, gdn_layout", [
    ("fp32", "io"), ("fp16", "io"), ("8w", "io"), ("4w", "io"), ("fp16", "state")])
def test_nano_recipes(tmp_path, qlinear, gdn_layout):
    """The shipped trained model through every recipe; the export's own gate enforces the quality floors."""
    manifest = _export("nano", tmp_path / "b", qlinear=qlinear, gdn_layout=gdn_layout, max_seq_len=512,
                       prefill_chunk=64)
    v = manifest["verification"]
    assert v["passed"] and v["quality_gate"], v
    print(f"\nnano coreml {qlinear} {gdn_layout}: {manifest['export']['conversion']['package_bytes'] / 1e6:.1f} MB, "
          f"top-1 {v['top1_agreement']:.3f}, KL {v['mean_kl']:.2e}, max|dlogit| {v['max_abs_logit_diff']:.3g}")
    assert np.isfinite(v["max_abs_logit_diff"])


def test_three_state_layout_converts_in_canonical_order(hf_checkpoint):
    """The `state` layout (three Core ML states) needs mil_passes' fixed canonicalize_inplace_pattern; after it every
    state update sits right after the op that produces its value."""
    from qwen_mobile.export.coreml.convert import convert_function
    from qwen_mobile.export.coreml.graph import CoreMLDecoder
    from qwen_mobile.models import Qwen35ForCausalLM

    folder, _ = hf_checkpoint("causal", "hv2x")
    decoder = CoreMLDecoder(Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=32), "state")
    mlmodel = convert_function(decoder, 1, precision="fp16")
    ops = list(mlmodel._mil_program.functions["main"].operations)
    updates = [i for i, op in enumerate(ops) if op.op_type == "coreml_update_state"]
    assert sorted(op.state.name for op in (ops[i] for i in updates)) == ["gdn_conv", "gdn_rec", "kv_cache"]
    for i in updates:
        assert ops[i].value.op is ops[i - 1], f"{ops[i].state.name} update is not next to its producer"


def test_split_model_runs_as_a_chain_of_packages(hf_checkpoint, tmp_path):
    """A size limit below the model splits its layers over chained packages (the 4B case, here forced on tiny):
    every package is checked from its spec, and the chain passes the fp32 gate against eager."""
    from qwen_mobile.export.coreml.mac_verify import verify
    from qwen_mobile.models import Qwen35ForCausalLM

    folder, _ = hf_checkpoint("causal", "hv2x")
    model = Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=64)
    layer_bytes = max(sum(p.numel() for p in layer.parameters()) * 4 for layer in model.model.layers)
    limit = model.model.embed_tokens.weight.numel() * 4 + int(1.5 * layer_bytes)  # about one layer per package
    out = tmp_path / "split"
    manifest = _export(folder, out, qlinear="fp32", max_package_bytes=limit)
    packages = manifest["program"]["packages"]
    assert len(packages) >= 3, packages
    assert [p["layers"][0] for p in packages][0] == 0 and packages[-1]["layers"][1] == 4
    assert all(a["layers"][1] == b["layers"][0] for a, b in zip(packages, packages[1:]))
    assert manifest["verification"]["passed"] and manifest["recipe"]["tied_table_copies"] == 2
    # tiny: layers L L L F, so the last package holds only the attention layer and keeps no delta-net io
    assert {b["package"] for b in manifest["state"]["buffers"] if b["name"] == "kv_cache"} == {packages[-1]["file"]}
    report = verify(out, backend="evaluator", steps=3)
    assert report["passed"], report
