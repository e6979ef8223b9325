"""The engine-plan vectors the iOS app's planner is tested on (tests/apps/make_engine_plans.py): present, their
manifests valid, and every recorded call consistent with the contract the exporter wrote into the same manifest.

The recorded calls come from the runtime (Session over BundleProgram or CoreMLRunner) and the method/package I/O from
the exporter, two independent pieces of code: a runtime that feeds a name, shape or dtype the program does not declare,
or a prompt split another way than the manifest's rule says, fails here before the Swift planner copies it. The slow
test re-exports the bundles and re-records the calls, failing on any drift from the committed files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_mobile.runtime.bundle import bundle_hash, validate_manifest

VECTORS = Path(__file__).resolve().parent / "vectors"
FILES = {"pte": "engine_plan_pte.json", "coreml": "engine_plan_coreml.json",
         "coreml_split": "engine_plan_coreml_split.json"}
# Image questions on the tiny VLM's Core ML bundle (one package, a chain of three): CoreMLEngine's image path replays them.
VISION_FILES = {"coreml_vision": "engine_plan_coreml_vision.json",
                "coreml_vision_split": "engine_plan_coreml_vision_split.json"}


def load(kind: str) -> dict:
    path = VECTORS / {**FILES, **VISION_FILES}[kind]
    assert path.is_file(), f"{path} missing: run tests/apps/make_engine_plans.py"
    return json.loads(path.read_text())


def concrete(shape: list, tokens: int) -> list[int]:
    return [tokens if isinstance(d, str) else d for d in shape]


def declared_io(manifest: dict, call: dict) -> tuple[list[dict], list[dict]]:
    """The inputs and outputs the manifest declares for the program part a call ran."""
    methods = manifest["program"]["methods"]
    if "method" in call:
        m = methods[call["method"]]
        return m["inputs"], m["outputs"]
    packages = manifest["program"]["packages"]
    if len(packages) == 1:
        m = next(m for m in methods.values() if m.get("function") == call["function"])
        return m["inputs"], m["outputs"]
    entry = next(p for p in packages if p["file"] == call["package"])
    return entry[call["function"]]["inputs"], entry[call["function"]]["outputs"]


@pytest.mark.parametrize("kind", sorted(FILES))
def test_manifest_valid_and_hash_recorded(kind):
    doc = load(kind)
    assert doc["format"] == "qwen-mobile-engine-plan" and doc["version"] == 1
    validate_manifest(doc["manifest"], FILES[kind])
    assert doc["bundle_hash"] == bundle_hash(doc["manifest"])
    assert doc["manifest"]["recipe"]["name"] == ("xnnpack" if kind == "pte" else "coreml")
    if kind == "coreml_split":
        assert len(doc["manifest"]["program"]["packages"]) >= 3, "the split vector must chain at least three packages"


@pytest.mark.parametrize("kind", sorted(FILES))
def test_calls_match_the_declared_io(kind):
    doc = load(kind)
    manifest = doc["manifest"]
    for name, case in doc["cases"].items():
        assert case["calls"], name
        for i, call in enumerate(case["calls"]):
            inputs, outputs = declared_io(manifest, call)
            tokens = call["inputs"][1]["shape"][0]  # input_pos [T]
            label = f"{kind} {name} call {i}"
            assert [t["name"] for t in call["inputs"]] == [t["name"] for t in inputs], label
            for got, want in zip(call["inputs"], inputs):
                assert got["shape"] == concrete(want["shape"], tokens), label
                assert got["dtype"] == want["dtype"], label
            if "outputs" in call:
                assert call["outputs"] == sorted(t["name"] for t in outputs), label


@pytest.mark.parametrize("kind", sorted(FILES))
def test_prompt_rule_and_positions(kind):
    """Every token the session consumed is fed once, in order, at consecutive positions from 0 (through each
    package of a chain), split as the manifest's prefill rule says."""
    doc = load(kind)
    manifest = doc["manifest"]
    chunk = manifest["program"]["methods"]["forward"]["max_tokens"]
    first_package = manifest["program"].get("packages", [{"file": None}])[0]["file"]
    for name, case in doc["cases"].items():
        fed, expected, pending = [], [], []
        for turn in case["turns"]:
            expected += pending + turn["prompt_ids"] + turn["generated_ids"][:-1]
            pending = turn["generated_ids"][-1:]
        for call in case["calls"]:
            if call.get("package", first_package) != first_package:
                continue  # later packages of a chain take hidden states at the same positions
            values = {t["name"]: t.get("values") for t in call["inputs"]}
            assert values["input_pos"] == list(range(len(fed), len(fed) + len(values["tokens"]))), name
            if kind == "pte":
                assert 1 <= len(values["tokens"]) <= chunk
            else:  # Core ML: whole chunks through prefill, everything else one at a time through decode
                assert (call["function"], len(values["tokens"])) in {("prefill", chunk), ("decode", 1)}, name
            fed += values["tokens"]
        assert fed == expected, name


def vision_declared_io(manifest: dict, call: dict) -> tuple[list[dict], list[dict]]:
    """The I/O the manifest declares for one call of an image question (CONTRACT.md, "Images in Core ML bundles")."""
    from qwen_mobile.runtime.contract import COREML_EMBEDDINGS_REMAINDER_FUNCTION, EMBEDDINGS_PREFILL_METHOD

    methods, function = manifest["program"]["methods"], call["function"]
    if call["package"] == manifest["vision"]["package"]["file"]:
        return methods[function]["inputs"], methods[function]["outputs"]
    packages = manifest["program"]["packages"]
    if len(packages) > 1:
        entry = next(p for p in packages if p["file"] == call["package"])
        return entry[function]["inputs"], entry[function]["outputs"]
    if function == COREML_EMBEDDINGS_REMAINDER_FUNCTION:
        rest = methods[EMBEDDINGS_PREFILL_METHOD]["remainder"]
        return rest["inputs"], rest["outputs"]
    m = next(m for m in methods.values() if m.get("function") == function and "package" not in m)
    return m["inputs"], m["outputs"]


@pytest.mark.parametrize("kind", sorted(VISION_FILES))
def test_vision_vector_manifest_and_declared_io(kind):
    doc = load(kind)
    manifest = doc["manifest"]
    validate_manifest(manifest, VISION_FILES[kind])
    assert doc["bundle_hash"] == bundle_hash(manifest)
    assert manifest["recipe"]["name"] == "coreml" and manifest["vision"]["package"]["file"] == "vision.mlpackage"
    assert len(manifest["program"]["packages"]) == (3 if kind.endswith("split") else 1)
    for name, case in doc["cases"].items():
        for i, call in enumerate(case["calls"]):
            inputs, outputs = vision_declared_io(manifest, call)
            label = f"{kind} {name} call {i}"
            assert [(t["name"], t["shape"], t["dtype"]) for t in call["inputs"]] == [
                (t["name"], t["shape"], t["dtype"]) for t in inputs], label
            assert call["outputs"] == sorted(t["name"] for t in outputs), label


@pytest.mark.parametrize("kind", sorted(VISION_FILES))
def test_vision_vector_follows_the_contract(kind):
    """CONTRACT.md's image steps in the recorded calls: the image encoded before its prompt is embedded; `embed`
    takes each turn's expanded prompt (pending token first) in chunks padded with 0; the first package's stateful calls
    feed every token once at consecutive cache slots from 0, image prompts as full chunks of prefill_embeddings and the
    rest one at a time, generated tokens through decode_rope one slot on and one rotary position on; a text-only
    conversation stays on prefill/decode."""
    doc = load(kind)
    manifest = doc["manifest"]
    vision, chunk = manifest["vision"], manifest["program"]["methods"]["forward"]["max_tokens"]
    first = manifest["program"]["packages"][0]["file"]
    for name, case in doc["cases"].items():
        calls = [c for c in case["calls"] if c["package"] in (first, vision["package"]["file"])]
        values = [{t["name"]: t.get("values") for t in c["inputs"]} for c in calls]
        images = [t["image"] for t in case["turns"] if t["image"]]
        assert [c["function"] for c in calls if c["function"].startswith("encode_image_")] == [
            i["method"] for i in images], name
        embedded = [t for c, v in zip(calls, values) if c["function"] == "embed" for t in v["tokens"]]
        slots = [p for c, v in zip(calls, values) if "input_pos" in v for p in v["input_pos"]]
        assert slots == list(range(len(slots))), name
        pending, expected = [], []
        for turn in case["turns"]:
            ids = pending + turn["prompt_ids"]
            if turn["image"]:
                tokens = next(i["tokens"] for i in vision["images"] if i["method"] == turn["image"]["method"])
                at = ids.index(vision["image_token_id"])
                ids = ids[:at] + [vision["image_token_id"]] * tokens + ids[at + 1:]
            expected += ids + [0] * (-len(ids) % chunk) if (images and (turn["image"] or expected)) else []
            pending = turn["generated_ids"][-1:]
        assert embedded == expected, name
        last_rope = None  # rotary position of the last token fed (a text token: its three rows are equal)
        for c, v in zip(calls, values):
            n = len(v.get("input_pos") or [])
            if c["function"] == "prefill_embeddings":
                assert n == chunk and len(v["rope_pos"]) == 3 * n, name
            elif c["function"] in ("decode_embeddings", "decode_rope"):
                assert n == 1, name
            if c["function"] == "decode_rope":
                assert v["rope_pos"] == [last_rope + 1], f"{name}: one rotary position on"
            if "rope_pos" in v:
                last_rope = v["rope_pos"][-1]
        if not images:
            assert {c["function"] for c in calls} == {"prefill", "decode"}, name


@pytest.mark.slow
def test_regenerated_vectors_match_committed(tmp_path):
    """Export the bundles again and re-record: the calls must not drift from the committed vectors."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_engine_plans", Path(__file__).with_name("make_engine_plans.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    for kind, file in {**FILES, **VISION_FILES}.items():
        fresh = json.loads((tmp_path / file).read_text())
        committed = load(kind)
        assert fresh["cases"] == committed["cases"], file
