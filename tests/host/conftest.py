"""tests/host: one fp32 bundle of the shipped nano model per session (about a minute to export), shared by the
session, chat, bench and CLI tests; and a second bundle with a different identity but the same state layout (one
file changed and re-hashed), which is the hard case for snapshot checks."""

import json
import shutil

import pytest

from qwen_mobile.export.api import export
from qwen_mobile.runtime.bundle import write_manifest
from qwen_mobile.runtime.session import Bundle

CONTEXT = 256


@pytest.fixture(scope="session")
def nano_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("host") / "nano-fp32"
    export("nano", out, preset="xnnpack-fp32", max_seq_len=CONTEXT, max_prefill_chunk=32, progress=False)
    return out


@pytest.fixture(scope="session")
def bundle(nano_bundle):
    return Bundle(nano_bundle)


@pytest.fixture(scope="session")
def other_bundle(nano_bundle, tmp_path_factory):
    """Same weights and state shapes, different bundle identity (a changed tokenizer_config.json)."""
    out = tmp_path_factory.mktemp("host") / "nano-fp32-other"
    shutil.copytree(nano_bundle, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 12345
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    write_manifest(out, json.loads((out / "manifest.json").read_text()))
    return Bundle(out)


