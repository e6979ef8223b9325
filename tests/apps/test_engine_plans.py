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


def load(kind: str) -> dict:
    path = VECTORS / FILES[kind]
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


@pytest.mark.slow
def test_regenerated_vectors_match_committed(tmp_path):
    """Export the bundles again and re-record: the calls must not drift from the committed vectors."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_engine_plans", Path(__file__).with_name("make_engine_plans.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    for kind, file in FILES.items():
        fresh = json.loads((tmp_path / file).read_text())
        committed = load(kind)
        assert fresh["cases"] == committed["cases"], file
