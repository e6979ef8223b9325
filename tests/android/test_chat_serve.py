"""The Android app's chat path end to end on this host: the app's Java logic (bundle check, tokenizer, ChatML, serve
client, chat bookkeeping) drives a real `qwen-bench --serve` (x86-64 build) on the nano model exported with its
tokenizer, and every turn's prompt ids, greedy tokens and text equal Python's chat (runtime/commands.py's cmd_chat
logic over runtime/session.py)."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TURNS = ["Write a function that adds two numbers.", "Now one that multiplies them, with a docstring.",
         "¿Y en español? 🙂"]
MAX_NEW = 24

@pytest.fixture(scope="module")
def qwen_bench() -> Path:
    from qwen_mobile.runtime import native

    build = Path(os.environ.get("QWEN_NATIVE_TEST_BUILD", native.RUNTIME_DIR / "build-native" / "pytest-x86_64"))
    return native.build_runner(build, native.host_executorch_cmake_dir())


@pytest.fixture(scope="module")
def nano_bundle(tmp_path_factory) -> Path:
    from qwen_mobile.export import export

    out = tmp_path_factory.mktemp("android-chat") / "nano-fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export("nano", out, preset="xnnpack-fp32", max_seq_len=256, progress=False)
    return out


@pytest.fixture(scope="module")
def classes(tmp_path_factory, java_tools) -> Path:
    out = tmp_path_factory.mktemp("android-chat-classes")
    sources = sorted((REPO / "android_app/src/org/qwenmobile/core").glob("*.java"))
    subprocess.run(["javac", "-nowarn", "-source", "8", "-target", "8", "-Xlint:-options", "-encoding", "UTF-8",
                    "-d", str(out), *map(str, sources), str(REPO / "tests/android/ChatDriver.java")], check=True)
    return out


def python_chat(bundle_dir: Path, turns: list[str]) -> list[dict]:
    """cmd_chat's turn logic, greedy: close the previous reply, render the user turn, generate."""
    from qwen_mobile.runtime.chat import IM_END, ChatTemplate
    from qwen_mobile.runtime.bundle import Bundle

    bundle = Bundle(bundle_dir)
    thinking = bool(bundle.manifest["tokenizer"].get("thinking_default"))
    template = ChatTemplate(thinking=thinking)
    im_end = bundle.tokenizer.token_to_id(IM_END)
    session = bundle.session()
    out = []
    for line in turns:
        close = ChatTemplate.close_assistant(session.pending == [im_end]) if session.pending else ""
        ids = bundle.encode(close + template.user(line))
        result = session.generate(ids, MAX_NEW, None)
        text = bundle.decode([t for t in result.ids if t not in bundle.stop_ids])
        out.append({"prompt_ids": ids, "tokens": result.ids, "text": text, "position": session.position})
    return out


def test_java_chat_over_serve_equals_python_chat(qwen_bench, nano_bundle, classes):
    proc = subprocess.run(["java", "-cp", str(classes), "ChatDriver", str(REPO), str(nano_bundle), str(MAX_NEW), *TURNS,
                           "--", str(qwen_bench), "--serve", "--bundle", str(nano_bundle)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    java = json.loads(proc.stdout)
    python = python_chat(nano_bundle, TURNS)
    assert len(java["turns"]) == len(python) == 3
    for k, (j, p) in enumerate(zip(java["turns"], python)):
        assert j["prompt_ids"] == p["prompt_ids"], f"turn {k}: prompt ids"
        assert j["tokens"] == p["tokens"], f"turn {k}: greedy tokens"
        assert j["text"] == p["text"], f"turn {k}: text"
        assert j["position"] == p["position"], f"turn {k}: position"
    # Not a trivial comparison: the replies hold several distinct tokens.
    assert len(set(java["turns"][0]["tokens"])) > 3
