"""qwen-bench (the native runner) against Python's BundleProgram on small exported bundles: the same greedy tokens
and logits, `decode_token` continuing `forward`'s state, schema-valid JSON, and loud failures on a bad bundle or
request."""

import json
import shutil

import numpy as np
import pytest
import torch
from native_testlib import bench_json, run_bench, validate
from qwen_mobile.runtime import native

# 21 tokens: two prefill chunks of the bundle's 16, so chunked prefill at a non-zero start position is covered.
PROMPT = torch.randint(2, 160, (21,), generator=torch.Generator().manual_seed(5)).tolist()
GEN = 24  # decode steps 22..44 of a 96-token cache


def native_run(exe, bundle, tmp_path, *extra):
    logits = tmp_path / "logits.bin"
    out = bench_json(exe, tmp_path, "--bundle", bundle, "--prompt-ids", ",".join(map(str, PROMPT)), "--gen", GEN,
                     "--runs", 2, "--warmup", 1, "--no-power", "--dump-logits", logits, *extra)
    vocab = json.loads((bundle / "manifest.json").read_text())["model"]["config"]["vocab_size"]
    return out, native.Run.from_files("native", tmp_path / "bench.json", logits, vocab)


def test_fp32_matches_python(qwen_bench, fp32_bundle, tmp_path):
    out, run = native_run(qwen_bench, fp32_bundle, tmp_path)
    ref = native.reference(fp32_bundle, PROMPT, GEN)
    assert len(set(ref.tokens)) > 3, "the reference should not repeat one token; the comparison would be weak"
    ok, line = native.compare(ref, run, native.FP32_LOGIT_TOL)
    assert ok, line
    assert run.logits.shape == (GEN, 160)
    assert out["results"][0]["runs_identical"]  # a prefill at position 0 resets the state between runs


def test_separate_arenas_break_decode(qwen_bench, fp32_bundle, tmp_path):
    """The shared-arena claim is what the parity test checks: with one set of arenas per method, `decode_token`
    starts from state it never saw `forward` write, and its logits move while the prefill logits stay exact."""
    _, run = native_run(qwen_bench, fp32_bundle, tmp_path, "--unshared-arenas")
    ref = native.reference(fp32_bundle, PROMPT, GEN)
    assert np.abs(run.logits[0] - ref.logits[0]).max() <= native.FP32_LOGIT_TOL
    assert np.abs(run.logits[1:] - ref.logits[1:]).max() > 1e-2


def test_json_matches_bench_schema(qwen_bench, fp32_bundle, tmp_path):
    out = bench_json(qwen_bench, tmp_path, "--bundle", fp32_bundle, "--prompt-len", "8,20", "--seed", 3, "--gen", 5,
                     "--runs", 3, "--warmup", 1, "--threads", 1, "--power-root", tmp_path / "no-sysfs")
    validate(out)
    assert out["producer"]["name"] == "qwen-bench"
    assert out["device"]["emulated"] is False
    assert out["settings"]["prompt_lengths"] == [8, 20] and out["settings"]["threads"] == 1
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    from qwen_mobile.runtime.bundle import bundle_hash

    assert out["bundle"]["hash"] == bundle_hash(manifest)
    for res, n in zip(out["results"], (8, 20)):
        assert res["prompt_tokens"] == n and len(res["prompt_ids"]) == n
        assert len(res["samples"]) == 3
        for s in res["samples"]:
            assert s["generated_tokens"] == 5 and len(s["decode_ms_per_token"]) == 4
    # No battery under the given root: energy is absent (null), and a note says why, rather than zeros.
    assert out["energy"] is None
    assert any("no battery" in n for n in out["notes"])


def test_stop_ids_end_a_run_when_asked(qwen_bench, fp32_bundle, tmp_path):
    ref = native.reference(fp32_bundle, PROMPT, GEN)
    # Make the 4th greedy token a stop id in a copy of the bundle (the manifest is not among the hashed files).
    copy = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"]["stop_ids"] = [ref.tokens[3]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    args = ("--bundle", copy, "--prompt-ids", ",".join(map(str, PROMPT)), "--gen", GEN, "--runs", 1, "--warmup", 0,
            "--no-power")
    stopped = bench_json(qwen_bench, tmp_path, *args, "--stop")
    assert stopped["results"][0]["generated_ids"] == ref.tokens[:ref.tokens.index(ref.tokens[3]) + 1]
    full = bench_json(qwen_bench, tmp_path, *args)  # a benchmark does the same work every run by default
    assert full["results"][0]["generated_ids"] == ref.tokens


def test_tampered_model_is_refused(qwen_bench, fp32_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, copy)
    with open(copy / "model.pte", "ab") as f:
        f.write(b"\0")
    args = ("--bundle", copy, "--prompt-len", 4, "--gen", 2, "--runs", 1, "--warmup", 0, "--no-power")
    proc = run_bench(qwen_bench, *args, check=False)
    assert proc.returncode == 1
    assert "model.pte: sha256 does not match manifest.json" in proc.stderr
    run_bench(qwen_bench, *args, "--no-verify")  # trailing bytes do not break the program itself


def test_unknown_kernel_namespace_fails_loudly(qwen_bench, fp32_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["program"]["kernel_namespaces"].append("llama")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = run_bench(qwen_bench, "--bundle", copy, "--prompt-len", 4, "--gen", 2, "--no-power", check=False)
    assert proc.returncode == 1
    assert "kernel_namespaces lists 'llama' but no kernel of that namespace is registered" in proc.stderr


def test_version_1_manifest_is_refused_with_a_re_export_hint(qwen_bench, fp32_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = run_bench(qwen_bench, "--bundle", copy, "--prompt-len", 4, "--gen", 2, "--no-power", check=False)
    assert proc.returncode == 1
    assert "schema_version 1, this qwen-bench reads version 2; re-export the bundle" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, message", [
    (("--prompt-len", 90, "--gen", 10), "does not fit the bundle's context of 96 tokens"),
    (("--prompt-ids", "1,2,999"), "token 999 is outside the vocabulary 0..159"),
    (("--prompt-len", 4, "--prefill-chunk", 17), "--prefill-chunk 17 exceeds the forward method's max_tokens 16"),
    (("--gen", "x"), "--gen: 'x' is not an integer"),
], ids=["context-overflow", "out-of-vocab", "chunk-too-big", "bad-integer"])
def test_bad_requests_name_the_flag(qwen_bench, fp32_bundle, args, message):
    proc = run_bench(qwen_bench, "--bundle", fp32_bundle, "--no-power", *args, check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_not_a_bundle(qwen_bench, tmp_path):
    proc = run_bench(qwen_bench, "--bundle", tmp_path, check=False)
    assert proc.returncode == 1 and "no readable manifest.json; not a qwen-mobile bundle" in proc.stderr


def test_compare_detects_a_mismatch():
    """The check the aarch64 script relies on must fail on a wrong logit or token, not only pass on equal ones."""
    logits = np.zeros((3, 8), np.float32)
    logits[:, 2] = 5.0
    a = native.Run("a", [2, 2, 2], logits)
    assert native.compare(a, native.Run("b", [2, 2, 2], logits + 1e-6), native.FP32_LOGIT_TOL)[0]
    bumped = logits.copy()
    bumped[1, 4] += 1e-3
    assert not native.compare(a, native.Run("b", [2, 2, 2], bumped), native.FP32_LOGIT_TOL)[0]
    assert not native.compare(a, native.Run("b", [2, 4, 2], logits), native.FP32_LOGIT_TOL)[0]


@pytest.mark.slow
def test_8da4w_matches_python(qwen_bench, q_bundle, tmp_path):
    """Quantized kernels (the wheel's quantized_decomposed library) run in the native build as in Python."""
    _, run = native_run(qwen_bench, q_bundle, tmp_path)
    ok, line = native.compare(native.reference(q_bundle, PROMPT, GEN), run, native.FP32_LOGIT_TOL)
    assert ok, line  # same x86 libraries on both sides: as exact as fp32


def test_without_a_prompt_the_runner_uses_the_manifests_sample_prompt(qwen_bench, fp32_bundle, tmp_path):
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    sample = manifest["sample_prompt"]["ids"]
    out = bench_json(qwen_bench, tmp_path, "--bundle", fp32_bundle, "--gen", 6, "--runs", 1, "--warmup", 0,
                     "--no-power")
    assert out["results"][0]["prompt_ids"] == sample
    assert out["settings"]["prompt_source"] == "the manifest's sample_prompt"
    assert out["results"][0]["generated_ids"] == native.reference(fp32_bundle, sample, 6).tokens


def test_etdump_profiles_both_methods(qwen_bench, q_bundle, tmp_path):
    """--etdump records every method call; bench/etdump_summary.py finds forward's and decode_token's calls (counts
    known from the run's shape), our kernels among their events, and shares of the method time that add up."""
    import sys

    sys.path.insert(0, str(native.RUNTIME_DIR.parent / "bench"))
    from etdump_summary import summarize

    dump = tmp_path / "run.etdp"
    out = bench_json(qwen_bench, tmp_path, "--bundle", q_bundle, "--prompt-ids", ",".join(map(str, PROMPT)), "--gen",
                     6, "--runs", 2, "--warmup", 1, "--no-power", "--threads", 1, "--etdump", dump)
    assert dump.is_file() and not (tmp_path / "run.etdp.partial").exists()
    assert any("ETDump recorded" in n for n in out["notes"])
    forward, decode = summarize(dump)
    assert forward["calls"] == 3 * 2  # (warmup + 2 runs) x two 16-token chunks of the 21-token prompt
    assert decode["calls"] == 3 * 5  # --gen 6: the first token comes from prefill
    for method in (forward, decode):
        names = {e["name"] for e in method["events"]}
        assert {"qwen35::gated_delta_rule.out", "qwen35::kv_cache_update.out", "DELEGATE_CALL"} <= names, names
        totals = sum(e["share"] for e in method["events"] if e["name"] in ("OPERATOR_CALL", "DELEGATE_CALL"))
        assert 0.5 < totals <= 1.0 + 1e-6, totals  # both kinds of call inside Method::execute, nothing counted twice
    caches = [b for b in json.loads((q_bundle / "manifest.json").read_text())["state"]["buffers"]
              if b["name"].endswith(("k_cache", "v_cache"))]
    by_name = {e["name"]: e for e in decode["events"]}
    assert caches and by_name["qwen35::kv_cache_update.out"]["calls_per_method_call"] == len(caches)


def test_etdump_summary_names_a_missing_file(tmp_path):
    import subprocess
    import sys

    script = native.RUNTIME_DIR.parent / "bench" / "etdump_summary.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "none.etdp")], capture_output=True, text=True)
    assert proc.returncode != 0 and "none.etdp: no such ETDump" in proc.stderr
