"""`qwen-bench --serve` (runtime/runner/SERVE.md) against Python's Session on the same small bundle: greedy and
seeded-sampling tokens, a chat's second turn equal to one long prompt, reset, snapshots both ways between the runner
and runtime/session.py, cancel, bench, and bad requests that get an error line naming the field while the process
keeps serving."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from native_testlib import validate
from qwen_mobile.runtime import native

sys.path.insert(0, str(native.RUNTIME_DIR / "scripts"))
from serve_client import ServeClient  # noqa: E402

# 21 tokens: two prefill chunks of the bundle's 16.
PROMPT = torch.randint(2, 160, (21,), generator=torch.Generator().manual_seed(5)).tolist()
TURN2 = torch.randint(2, 160, (9,), generator=torch.Generator().manual_seed(6)).tolist()
NO_STOP = dict(stop_at_stop_ids=False)


@pytest.fixture(scope="module")
def fp32(request) -> Path:
    """conftest's fp32 bundle; QWEN_NATIVE_TEST_FP32_BUNDLE names an already exported copy of it (same checkpoint and
    bounds) to skip the export while iterating on the runner."""
    given = os.environ.get("QWEN_NATIVE_TEST_FP32_BUNDLE")
    return Path(given) if given else request.getfixturevalue("fp32_bundle")


@pytest.fixture(scope="module")
def py_bundle(fp32):
    from qwen_mobile.runtime.bundle import Bundle

    return Bundle(fp32)


@pytest.fixture
def serve(qwen_bench, fp32):
    clients = []

    def start(bundle=fp32, *extra):
        c = ServeClient([str(qwen_bench), "--serve", "--bundle", str(bundle), *map(str, extra)], timeout=300)
        clients.append(c)
        return c

    yield start
    for c in clients:
        c.close()


def py_generate(py_bundle, prompt, n, sampling=None, session=None):
    from qwen_mobile.runtime.sampling import Sampler, SamplingConfig

    session = session or py_bundle.session()
    sampler = Sampler(SamplingConfig(**sampling)) if sampling else None
    return session.generate(prompt, n, sampler, stop_ids=set()).ids, session


def test_ready_line_describes_the_bundle(serve, fp32):
    from qwen_mobile.runtime.bundle import bundle_hash

    c = serve()
    manifest = json.loads((fp32 / "manifest.json").read_text())
    r = c.ready
    assert r["event"] == "ready" and r["protocol"] == 1 and r["bundle"] == str(fp32)
    assert (r["vocab_size"], r["max_seq_len"], r["max_prefill_tokens"]) == (160, 96, 16)
    assert r["stop_ids"] == manifest["tokenizer"]["stop_ids"]
    assert r["model"] == manifest["model"]["id"] and r["recipe"] == manifest["recipe"]["preset"]
    assert r["bundle_hash"] == bundle_hash(manifest) and r["snapshots"] is True
    assert r["threads"] >= 1


def test_greedy_tokens_equal_python(serve, fp32, py_bundle):
    c = serve()
    tokens, done = c.generate(PROMPT, 24, **NO_STOP, id="g1")
    expected, session = py_generate(py_bundle, PROMPT, 24)
    assert len(set(expected)) > 3, "a reference that repeats one token would make the comparison weak"
    assert tokens == expected == native.reference(fp32, PROMPT, 24).tokens
    assert done["id"] == "g1" and done["stop_reason"] == "max_new_tokens"
    assert done["prompt_tokens"] == 21 and done["position"] == session.position == 21 + 23
    assert done["ttft_ms"] > 0 and done["prefill_tok_s"] > 0 and done["decode_tok_s"] > 0


SAMPLING = [
    dict(temperature=1.0, seed=1),
    dict(temperature=0.8, top_k=20, seed=7),
    dict(temperature=1.3, top_p=0.9, seed=2**40 + 3),
    dict(temperature=0.7, top_k=50, top_p=0.8, repetition_penalty=1.3, seed=11),
    dict(temperature=0, repetition_penalty=1.5),  # greedy with a penalty: no draw, the penalty alone
]


@pytest.mark.parametrize("sampling", SAMPLING, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_seeded_sampling_equals_pythons_sampler(serve, py_bundle, sampling):
    c = serve()
    tokens, _ = c.generate(PROMPT, 40, **NO_STOP, **sampling)
    expected, _ = py_generate(py_bundle, PROMPT, 40, sampling)
    assert tokens == expected
    greedy, _ = py_generate(py_bundle, PROMPT, 40)
    assert tokens != greedy, "these settings should move the tokens away from greedy, or the test proves little"
    again, _ = c.generate(PROMPT, 40, **NO_STOP, **sampling)
    assert again == tokens  # same seed, same tokens


def test_different_seeds_differ(serve):
    c = serve()
    a, _ = c.generate(PROMPT, 30, **NO_STOP, temperature=1.0, seed=1)
    b, _ = c.generate(PROMPT, 30, **NO_STOP, temperature=1.0, seed=2)
    assert a != b


def test_second_turn_equals_one_long_prompt(serve):
    c = serve()
    turn1, _ = c.generate(PROMPT, 6, **NO_STOP)
    turn2, done = c.generate(TURN2, 10, **NO_STOP, **{"continue": True})
    # The last token of turn 1 was sampled but not yet fed: the second turn's prefill feeds it first.
    assert done["position"] == 21 + 6 + 9 + 9
    fresh = serve()
    long, _ = fresh.generate(PROMPT + turn1 + TURN2, 10, **NO_STOP)
    assert turn2 == long


def test_reset_and_a_fresh_generate_forget_the_conversation(serve):
    c = serve()
    first, _ = c.generate(PROMPT, 8, **NO_STOP)
    c.generate(TURN2, 5, **NO_STOP, **{"continue": True})
    assert c.request({"op": "reset", "id": 3}) == {"event": "ok", "id": 3, "op": "reset", "position": 0}
    info = c.request({"op": "info"})
    assert info["event"] == "info" and info["position"] == 0 and info["history_tokens"] == 0
    again, _ = c.generate(PROMPT, 8, **NO_STOP, **{"continue": True})  # nothing pending after a reset
    assert again == first
    c.generate(TURN2, 5, **NO_STOP, **{"continue": True})
    third, done = c.generate(PROMPT, 8, **NO_STOP)  # continue: false resets first
    assert third == first and done["position"] == 21 + 7


def test_snapshots_round_trip_and_cross_with_python(serve, py_bundle, tmp_path):
    c = serve()
    c.generate(PROMPT, 6, **NO_STOP)
    saved = c.request({"op": "save", "path": str(tmp_path / "turn1.safetensors"), "id": "s"})
    assert saved["event"] == "ok" and saved["op"] == "save" and saved["position"] == 21 + 5
    assert saved["bytes"] == (tmp_path / "turn1.safetensors").stat().st_size
    assert not (tmp_path / "turn1.safetensors.partial").exists()
    reference, done = c.generate(TURN2, 10, **NO_STOP, **{"continue": True})
    assert len(set(reference)) > 3
    loaded = c.request({"op": "load", "path": str(tmp_path / "turn1.safetensors")})
    assert loaded["event"] == "ok" and loaded["position"] == 21 + 5
    # The restored state itself, not only the tokens (a tiny random model's tokens barely depend on its recurrent
    # state): saved again right after the load, every buffer is bit-identical.
    c.request({"op": "save", "path": str(tmp_path / "reloaded.safetensors")})
    assert_same_snapshot(tmp_path / "turn1.safetensors", tmp_path / "reloaded.safetensors")
    assert c.generate(TURN2, 10, **NO_STOP, **{"continue": True})[0] == reference

    # The runner's file in Python, and Python's file in the runner.
    session = py_bundle.session()
    snap = session.load(tmp_path / "turn1.safetensors")
    assert snap.position == 21 + 5 and len(snap.pending) == 1
    assert py_generate(py_bundle, TURN2, 10, session=session)[0] == reference
    session = py_bundle.session()
    session.generate(PROMPT, 6, stop_ids=set())
    session.save(tmp_path / "python.safetensors")
    c.request({"op": "reset"})
    assert c.request({"op": "load", "path": str(tmp_path / "python.safetensors")})["position"] == 21 + 5
    c.request({"op": "save", "path": str(tmp_path / "python-via-runner.safetensors")})
    assert_same_snapshot(tmp_path / "python.safetensors", tmp_path / "python-via-runner.safetensors")
    assert_same_snapshot(tmp_path / "python.safetensors", tmp_path / "turn1.safetensors")
    assert c.generate(TURN2, 10, **NO_STOP, **{"continue": True})[0] == reference


def assert_same_snapshot(a, b):
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        meta_a, meta_b = fa.metadata(), fb.metadata()
        for key in ("format", "version", "bundle_hash", "position", "pending"):
            assert meta_a[key] == meta_b[key], key
        assert json.loads(meta_a["tokens"]) == json.loads(meta_b["tokens"])
        assert set(fa.keys()) == set(fb.keys())
        changed = [k for k in fa.keys() if not torch.equal(fa.get_tensor(k), fb.get_tensor(k))]
        assert not changed, f"{a.name} vs {b.name}: buffers differ: {changed}"


def test_a_snapshot_of_another_bundle_is_refused(serve, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    c = serve()
    c.generate(PROMPT, 3, **NO_STOP)
    path = tmp_path / "snap.safetensors"
    c.request({"op": "save", "path": str(path)})
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata=dict(meta, bundle_hash="f" * 64))
    r = c.request({"op": "load", "path": str(tmp_path / "other.safetensors"), "id": 9})
    assert r["event"] == "error" and r["id"] == 9 and "was saved from bundle ffffffffffff" in r["message"]
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    r = c.request({"op": "load", "path": str(tmp_path / "junk.safetensors")})
    assert r["event"] == "error" and r["message"].startswith("path: ") and "not a safetensors file" in r["message"]
    assert c.request({"op": "info"})["position"] == 21 + 2  # the failed loads left the state alone


def test_cancel_stops_a_running_generate(serve):
    c = serve()
    greedy, _ = c.generate(PROMPT, 60, **NO_STOP)
    c.send_line(json.dumps({"op": "generate", "prompt_ids": PROMPT, "max_new_tokens": 60, **NO_STOP, "id": 1})
                + "\n" + json.dumps({"op": "cancel", "id": 2}))
    lines, done = c.collect()
    assert done["event"] == "done" and done["id"] == 1 and done["stop_reason"] == "cancelled"
    assert len(done["tokens"]) < 60 and done["tokens"] == greedy[:len(done["tokens"])]
    assert c.read() == {"event": "ok", "id": 2, "op": "cancel"}
    # A cancel with nothing running does not cancel the next generate.
    assert c.request({"op": "cancel"})["event"] == "ok"
    tokens, done = c.generate(PROMPT, 60, **NO_STOP)
    assert tokens == greedy and done["stop_reason"] == "max_new_tokens"


def test_stop_ids_and_context_full(serve, fp32, tmp_path):
    import shutil

    c = serve()
    greedy, _ = c.generate(PROMPT, 24, **NO_STOP)
    copy = tmp_path / "bundle"
    shutil.copytree(fp32, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"]["stop_ids"] = [greedy[3]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    s = serve(copy)
    tokens, done = s.generate(PROMPT, 24)
    assert tokens == greedy[:greedy.index(greedy[3]) + 1] and done["stop_reason"] == "stop_id"
    # 96 positions: a 90-token prompt leaves room to feed 6 more tokens, so 7 are sampled.
    tokens, done = c.generate(list(range(2, 92)), 50, **NO_STOP)
    assert done["stop_reason"] == "context_full" and len(tokens) == 7 and done["position"] == 96


def test_bench_request_gives_the_bench_schema(serve, fp32):
    c = serve()
    c.generate(PROMPT, 4, **NO_STOP)
    r = c.request({"op": "bench", "prompt_ids": PROMPT, "gen": 6, "runs": 2, "warmup": 1, "id": "b"})
    assert r["event"] == "bench" and r["id"] == "b"
    validate(r["result"])
    res = r["result"]["results"][0]
    assert res["generated_ids"] == native.reference(fp32, PROMPT, 6).tokens and res["runs_identical"]
    assert r["result"]["energy"] is None and any("serve mode" in n for n in r["result"]["notes"])
    r = c.request({"op": "bench", "prompt_lens": [8, 12], "gen": 3, "runs": 1, "warmup": 0})
    assert r["result"]["settings"]["prompt_lengths"] == [8, 12]
    assert c.request({"op": "info"})["position"] == 0  # benchmark runs start at position 0: the chat is gone


BAD = [
    ("not json", "invalid JSON"),
    ("[1, 2]", "request: expected a JSON object"),
    ('{"prompt_ids": [1]}', "op: required"),
    ('{"op": "dance", "id": 7}', "op: unknown 'dance'"),
    ('{"op": "generate", "id": {"a": 1}}', "id: must be"),
    ('{"op": "generate", "max_new_tokens": 4}', "prompt_ids: required"),
    ('{"op": "generate", "prompt_ids": [1, 2, 999]}', "prompt_ids: token 999 is outside the vocabulary 0..159"),
    ('{"op": "generate", "prompt_ids": [1, "a"]}', "prompt_ids[1]: expected an integer"),
    ('{"op": "generate", "prompt_ids": []}', "prompt_ids: empty"),
    ('{"op": "generate", "prompt_ids": [1], "max_new_tokens": "x"}', "max_new_tokens: expected an integer >= 0"),
    ('{"op": "generate", "prompt_ids": [1], "temperature": -1}', "temperature: must be"),
    ('{"op": "generate", "prompt_ids": [1], "top_k": -2}', "top_k: expected an integer >= 0"),
    ('{"op": "generate", "prompt_ids": [1], "top_p": 0}', "top_p: must be in (0, 1]"),
    ('{"op": "generate", "prompt_ids": [1], "repetition_penalty": 0}', "repetition_penalty: must be"),
    ('{"op": "generate", "prompt_ids": [1], "seed": -1}', "seed: expected an integer >= 0"),
    ('{"op": "generate", "prompt_ids": [1], "continue": 1}', "continue: expected true or false"),
    ('{"op": "generate", "prompt_ids": [1], "temprature": 0.5}', "temprature: unknown field for op 'generate'"),
    ('{"op": "generate", "prompt_ids": [' + ",".join(["5"] * 97) + "]}", "prompt_ids: 97 tokens do not fit"),
    ('{"op": "bench", "prompt_lens": [90], "gen": 10}', "does not fit the bundle's context of 96 tokens"),
    ('{"op": "bench", "runs": 0}', "runs: expected an integer >= 1"),
    ('{"op": "save"}', "path: required"),
    ('{"op": "save", "path": "relative.safetensors"}', "path: must be an absolute path"),
    ('{"op": "save", "path": "/nonexistent-dir/x.safetensors"}', "path: /nonexistent-dir/x.safetensors: cannot"),
    ('{"op": "load", "path": "/nonexistent-dir/x.safetensors"}', "no such readable file"),
    ('{"op": "reset", "position": 3}', "position: unknown field for op 'reset'"),
]


def test_bad_requests_get_an_error_line_and_the_server_keeps_serving(serve, py_bundle):
    c = serve()
    for n, (line, message) in enumerate(BAD):
        c.send_line(line)
        r = c.read()
        assert r["event"] == "error" and message in r["message"], (line, r)
        if '"id": 7' in line:
            assert r["id"] == 7
    tokens, _ = c.generate(PROMPT, 12, **NO_STOP)
    assert tokens == py_generate(py_bundle, PROMPT, 12)[0]
    assert c.request({"op": "quit", "id": "q"}) == {"event": "bye", "id": "q"}
    assert c.close() == 0


def test_end_of_input_quits(serve):
    c = serve()
    assert c.close() == 0


def test_a_bundle_that_cannot_load_is_one_error_line(qwen_bench, tmp_path):
    c = ServeClient([str(qwen_bench), "--serve", "--bundle", str(tmp_path)], timeout=60)
    assert c.ready["event"] == "error" and "no readable manifest.json" in c.ready["message"]
    assert c.close() == 1


def test_bench_flags_are_refused_with_serve(qwen_bench, fp32, tmp_path):
    import subprocess

    proc = subprocess.run([str(qwen_bench), "--serve", "--bundle", str(fp32), "--json", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--serve: --json is a benchmark-mode option" in proc.stderr
