"""The apps' shared test vectors (tests/apps/vectors) are what make_vectors.py writes today, and they agree with the
references directly: Hugging Face tokenizers, the nano tokenizer's own Jinja chat template, the manifest schema."""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import make_vectors  # noqa: E402

VECTORS = make_vectors.VECTORS
REPO = make_vectors.REPO
CASE_FILES = ["tokenizer_nano.json", "tokenizer_qwenlike.json", "pretokenize.json", "chat_template.json",
              "manifest_cases.json", "sampling.json"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vectors")
    assert make_vectors.main(["--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", CASE_FILES)
def test_committed_vectors_are_current(regenerated, name):
    committed = (VECTORS / name).read_text(encoding="utf-8")
    fresh = (regenerated / name).read_text(encoding="utf-8")
    assert committed == fresh, (f"tests/apps/vectors/{name} is stale: run `python tests/apps/make_vectors.py` and "
                                "commit the result (the apps' unit tests read it)")


def test_qwenlike_tokenizer_retrains_identically(tmp_path):
    out = tmp_path / "qwenlike_tokenizer.json"
    make_vectors.train_qwenlike(out)
    assert out.read_bytes() == (REPO / make_vectors.QWENLIKE_TOKENIZER).read_bytes()
    assert out.stat().st_size < 1 << 20


@pytest.mark.parametrize("name", ["tokenizer_nano.json", "tokenizer_qwenlike.json"])
def test_tokenizer_vectors_against_tokenizers(name):
    from tokenizers import Tokenizer

    doc = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(str(REPO / doc["tokenizer"]))
    texts = [c["text"] for c in doc["cases"]]
    # Coverage the apps rely on: empty, ZWJ emoji, code, whitespace runs, numbers, special tokens inside text.
    assert "" in texts
    assert any("\u200d" in t for t in texts) and any("def " in t for t in texts) and any("   " in t for t in texts)
    assert any("<|im_start|>" in t for t in texts) and any(ch.isdigit() for t in texts for ch in t)
    special = {tok.token_to_id(t) for t in make_vectors.SPECIAL}
    assert any(set(c["ids"]) & special for c in doc["cases"])
    for c in doc["cases"]:
        assert tok.encode(c["text"], add_special_tokens=False).ids == c["ids"], c["text"]
        assert tok.decode(c["ids"], skip_special_tokens=False) == c["decoded"], c["text"]
        # Byte-level BPE is lossless up to the NFC normalizer.
        assert c["decoded"] == unicodedata.normalize("NFC", c["text"])
        assert all(0 <= i < tok.get_vocab_size() for i in c["ids"])


def test_qwenlike_tokenizer_has_qwens_shape():
    doc = json.loads((REPO / make_vectors.QWENLIKE_TOKENIZER).read_text(encoding="utf-8"))
    split = doc["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == make_vectors.QWEN2_PATTERN
    added = {t["content"]: t for t in doc["added_tokens"]}
    for t in make_vectors.SPECIAL:
        assert added[t]["special"] and not added[t]["normalized"]
    for t in make_vectors.NOT_SPECIAL_ADDED:
        assert not added[t]["special"] and not added[t]["normalized"]
    # The nano tokenizer uses Qwen3.5's variant of the split (marks join letters): the two files differ there.
    nano = json.loads((REPO / make_vectors.NANO_TOKENIZER).read_text())
    assert nano["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] != make_vectors.QWEN2_PATTERN


def test_chat_vectors_match_the_shipped_jinja_template_where_they_agree():
    """runtime/chat.py against the nano tokenizer's own Jinja template, for conversations without earlier assistant
    turns (where chat.py keeps think blocks on purpose and the Jinja template drops them)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    config = json.loads((REPO / "models/nano/tokenizer_config.json").read_text())
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(config["chat_template"])
    doc = json.loads((VECTORS / "chat_template.json").read_text(encoding="utf-8"))
    compared = 0
    for c in doc["cases"]:
        if any(m["role"] == "assistant" for m in c["messages"]):
            continue
        jinja = template.render(messages=c["messages"], add_generation_prompt=c["add_generation_prompt"],
                                enable_thinking=c["enable_thinking"])
        assert jinja == c["text"]
        compared += 1
    assert compared >= 4


def test_chat_vector_ids_are_the_nano_tokenizers():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(REPO / make_vectors.NANO_TOKENIZER))
    doc = json.loads((VECTORS / "chat_template.json").read_text(encoding="utf-8"))
    for c in doc["cases"]:
        assert tok.encode(c["text"], add_special_tokens=False).ids == c["ids_nano"]
        assert c["ids_nano"].count(tok.token_to_id("<|im_start|>")) == c["text"].count("<|im_start|>")


def test_sampling_vectors_are_float32_and_replay():
    import struct

    import torch
    from qwen_mobile.runtime.sampling import Sampler, SamplingConfig

    doc = json.loads((VECTORS / "sampling.json").read_text())
    names = {c["name"] for c in doc["cases"]}
    assert {"greedy_ties_lowest_index", "top_k_ties_survive", "top_p_ties", "repetition_penalty_negative_logits",
            "greedy_repetition_penalty_moves_argmax"} <= names
    for c in doc["cases"]:
        for v in c["logits"]:
            assert v == struct.unpack("<f", struct.pack("<f", v))[0]  # exactly a float32
        sampler = Sampler(SamplingConfig(**c["config"]))
        logits = torch.tensor(c["logits"], dtype=torch.float32)
        assert [sampler(logits, list(c["context"])) for _ in c["tokens"]] == c["tokens"], c["name"]
    by_name = {c["name"]: c for c in doc["cases"]}
    assert by_name["greedy_ties_lowest_index"]["tokens"] == [1] * 8  # ties at 1, 3, 5: the lowest index
    assert by_name["greedy_repetition_penalty_moves_argmax"]["tokens"] == [3] * 8  # 1.5/4 < 0.5


def test_manifest_cases_against_jsonschema():
    import jsonschema

    schema = json.loads((REPO / "runtime/schemas/manifest.schema.json").read_text())
    doc = json.loads((VECTORS / "manifest_cases.json").read_text())
    assert sum(not c["valid"] for c in doc["cases"]) >= 25
    for c in doc["cases"]:
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(c["manifest"]))
        assert (not errors) == c["valid"], c["name"]
        if errors:
            assert len(errors) == 1, f"{c['name']}: a case should break exactly one rule"
            assert ("/".join(map(str, errors[0].absolute_path)) or "(top level)") == c["field"]
