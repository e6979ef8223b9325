"""The bundle contract has one home (runtime/contract.py); every reader spells its names the same way.

The C++ runner, the Java app and the Swift app cannot import Python, so their copies of the names are read from their
sources here: renaming a method or bumping the schema version in contract.py without following it in a reader fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qwen_mobile.runtime import contract

ROOT = Path(__file__).resolve().parents[2]
CPP_RUNNER = ROOT / "runtime" / "runner" / "qwen_bench.cpp"
JAVA_BUNDLE = ROOT / "android_app" / "src" / "org" / "qwenmobile" / "core" / "Bundle.java"
SWIFT_MANIFEST = ROOT / "ios_app" / "Sources" / "QwenMobileKit" / "Manifest.swift"
SWIFT_ET_ENGINE = ROOT / "ios_app" / "Sources" / "QwenMobileEngines" / "ExecuTorchEngine.swift"


def _one(pattern: str, path: Path) -> str:
    found = re.findall(pattern, path.read_text())
    assert found, f"{path.relative_to(ROOT)}: no match for {pattern!r}"
    assert len(set(found)) == 1, f"{path.relative_to(ROOT)}: several values for {pattern!r}: {found}"
    return found[0]


def test_the_native_runner_runs_the_contracts_methods_and_reads_its_files():
    assert _one(r'kDecodeMethod\s*=\s*"(\w+)"', CPP_RUNNER) == contract.DECODE_METHOD
    assert _one(r'kPrefillMethod\s*=\s*"(\w+)"', CPP_RUNNER) == contract.PREFILL_METHOD
    assert f'"/{contract.MANIFEST}"' in CPP_RUNNER.read_text()
    assert int(_one(r"kManifestVersion\s*=\s*(\d+)", CPP_RUNNER)) == contract.MANIFEST_SCHEMA_VERSION


def test_the_android_app_reads_the_contracts_manifest_version():
    assert _one(r'String MANIFEST\s*=\s*"([^"]+)"', JAVA_BUNDLE) == contract.MANIFEST
    assert int(_one(r"int SCHEMA_VERSION\s*=\s*(\d+)", JAVA_BUNDLE)) == contract.MANIFEST_SCHEMA_VERSION


def test_the_ios_app_reads_the_contracts_manifest_version_and_methods():
    assert _one(r'static let fileName\s*=\s*"([^"]+)"', SWIFT_MANIFEST) == contract.MANIFEST
    assert int(_one(r"static let schemaVersion\s*=\s*(\d+)", SWIFT_MANIFEST)) == contract.MANIFEST_SCHEMA_VERSION
    assert _one(r'static let prefillMethod\s*=\s*"(\w+)"', SWIFT_MANIFEST) == contract.PREFILL_METHOD
    assert _one(r'static let decodeMethod\s*=\s*"(\w+)"', SWIFT_MANIFEST) == contract.DECODE_METHOD
    # The engine names methods only through those constants.
    engine = SWIFT_ET_ENGINE.read_text()
    assert f'"{contract.DECODE_METHOD}"' not in engine and f'"{contract.PREFILL_METHOD}"' not in engine


def test_the_schema_pins_the_contracts_format_and_version():
    schema = json.loads(contract.SCHEMA_PATH.read_text())
    props = schema["properties"]
    assert props["format"]["const"] == contract.BUNDLE_FORMAT
    assert props["schema_version"]["const"] == contract.MANIFEST_SCHEMA_VERSION


def _minimal_sections(max_prefill: int = 8, context: int = 64) -> dict:
    tensor = contract.tensor_spec
    logits = [tensor("logits", [1, 1, 16], "float32")]
    return dict(
        toolkit_version="0", created_utc="2026-01-01T00:00:00+00:00",
        model={"id": "m", "source": "m", "size": None, "params": 1, "random_weights": True,
               "config": {"vocab_size": 16}},
        recipe={"name": "xnnpack", "backend": "xnnpack", "preset": None, "qlinear": "fp32", "qembedding": "none",
                "group_size": 32},
        program={"file": contract.PROGRAM, "op_namespace": contract.OP_NAMESPACE, "kernel_namespaces": [],
                 "methods": {
                     contract.PREFILL_METHOD: contract.token_method(
                         "prefill", inputs=[tensor("tokens", [1, "T"], "int64")], outputs=logits, min_tokens=1,
                         max_tokens=max_prefill, resets_state_at_position_0=True),
                     contract.DECODE_METHOD: contract.token_method(
                         "decode", inputs=[tensor("tokens", [1, 1], "int64")], outputs=logits, min_tokens=1,
                         max_tokens=1, resets_state_at_position_0=False)}},
        state={"max_seq_len": context, "max_batch_size": 1, "shared_between_methods": True, "reset": "r",
               "buffers": []},
        tokenizer={"file": None, "config_file": None, "bos_id": None, "stop_ids": [], "thinking_default": None},
        verification={"passed": True}, export={"seconds": 1.0})


def test_build_manifest_refuses_what_the_schema_cannot_see():
    manifest = contract.build_manifest(**_minimal_sections())
    assert (manifest["format"], manifest["schema_version"]) == (contract.BUNDLE_FORMAT,
                                                                contract.MANIFEST_SCHEMA_VERSION)
    with pytest.raises(ValueError, match="more than the context"):
        contract.build_manifest(**_minimal_sections(max_prefill=128, context=64))
    sections = _minimal_sections()
    del sections["program"]["methods"][contract.DECODE_METHOD]
    with pytest.raises(ValueError, match=f"lacks \\['{contract.DECODE_METHOD}'\\]"):
        contract.build_manifest(**sections)


def test_every_exporter_writes_its_manifest_through_build_manifest():
    """No hand-built manifest dict outside the contract: the exporters' sources never spell the top-level keys."""
    recipes = ROOT / "export" / "recipes"
    for path in sorted(recipes.glob("*.py")):
        text = path.read_text()
        for key in ("schema_version", "\"format\"", "created_utc"):
            assert key not in text or path.name == "base.py" and key == "created_utc", f"{path.name} writes {key}"
    assert "contract.build_manifest(" in (recipes / "base.py").read_text()


def test_seq_axis_is_the_token_axis_of_kv_caches_only():
    assert contract.seq_axis("model.layers.3.self_attn.k_cache") == contract.KV_SEQ_AXIS
    assert contract.seq_axis("model.layers.3.self_attn.v_cache") == contract.KV_SEQ_AXIS
    assert contract.seq_axis("model.layers.0.linear_attn.recurrent_state") is None
    assert contract.seq_axis("model.layers.0.linear_attn.conv_state") is None
    assert contract.is_state_buffer("model.layers.0.linear_attn.conv_state")
    assert not contract.is_state_buffer("model.layers.0.linear_attn.A_log")


IMAGE_H = ROOT / "runtime" / "runner" / "image_prompt.h"
SWIFT_IMAGES = ROOT / "ios_app" / "Sources" / "QwenMobileKit" / "Images.swift"
JAVA_IMAGE_INPUT = ROOT / "android_app" / "src" / "org" / "qwenmobile" / "core" / "ImageInput.java"


def test_the_readers_name_the_image_methods_and_share_the_size_rule():
    from qwen_mobile.runtime import images

    for name, const in (("kEmbedMethod", contract.EMBED_METHOD),
                        ("kEmbeddingsPrefillMethod", contract.EMBEDDINGS_PREFILL_METHOD),
                        ("kRopeDecodeMethod", contract.ROPE_DECODE_METHOD),
                        ("kImageMethodPrefix", contract.IMAGE_METHOD_PREFIX)):
        assert _one(rf'{name}\s*=\s*"(\w+)"', IMAGE_H) == const, name
    for name, const in (("embedMethod", contract.EMBED_METHOD), ("prefillMethod", contract.EMBEDDINGS_PREFILL_METHOD),
                        ("decodeMethod", contract.ROPE_DECODE_METHOD)):
        assert _one(rf'static let {name}\s*=\s*"(\w+)"', SWIFT_IMAGES) == const, name
    # The size rule's tolerance: the apps choose the same size as the host for the same image.
    assert float(_one(r"static let sameAspect\s*=\s*([0-9.]+)", SWIFT_IMAGES)) == images.SAME_ASPECT
    assert float(_one(r"SAME_ASPECT\s*=\s*([0-9.]+);", JAVA_IMAGE_INPUT)) == images.SAME_ASPECT
