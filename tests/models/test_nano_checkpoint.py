"""The shipped nano checkpoint (models/nano/) is a real, trained Qwen3.5 model that transformers loads.

It is the default model of the README and the apps, and the model on which quantization recipes
prove their quality, so these tests check its layout, its tokenizer and chat template against the
Qwen3.5 conventions written by hand here, and that its weights are the trained ones (held-out
perplexity, greedy code generation). Fast: one small model, a few thousand tokens.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

NANO = Path(__file__).resolve().parents[2] / "models" / "nano"

# Held-out sample perplexity of the shipped weights (bf16 file, fp32 compute; 8 windows from the held-out packages):
# 19.74, 1.154 bits/byte (models/nano/README.md; the pre-trained weights before the loop-branch fine-tune: 17.69,
# 1.112). The bound is 10 % above it, the rule the earlier bounds used: enough for BLAS and thread-count differences,
# while the previous nano (38.25, 1.410), the first nano (294.4, 2.200 on the same windows), shifted norms, tiled heads
# or random weights (ppl ~8192) land far above.
PPL_BOUND = 21.7
BPB_BOUND = 1.27

SPECIAL = {  # Qwen's names; ids are this tokenizer's (BPE ids first, added tokens last, as in Qwen)
    "<|endoftext|>": 8166,
    "<|im_start|>": 8167,
    "<|im_end|>": 8168,
    "<think>": 8190,
    "</think>": 8191,
}
CODE = 'def add(a, b):\n    """Return a + b."""\n    return a + b\n\n\nclass Point:\n    x: int = 0\n'


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(NANO)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(NANO, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def greedy_64(model, tokenizer):
    """prompt -> the 64 tokens greedy decoding appends to it, decoded; each prompt is decoded once per module."""
    done = {}

    def continuation(prompt: str) -> str:
        if prompt not in done:
            ids = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=64, do_sample=False)
            done[prompt] = tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
        return done[prompt]

    return continuation


def test_config_is_qwen35_text_layout():
    cfg = json.loads((NANO / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_5_text"
    assert cfg["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
    assert cfg["tie_word_embeddings"] is True
    assert cfg["rope_parameters"]["partial_rotary_factor"] == 0.25
    for key in ("head_dim", "linear_key_head_dim", "linear_value_head_dim"):
        assert cfg[key] % 32 == 0, key  # kernels' fast paths
    assert cfg["linear_num_value_heads"] == 2 * cfg["linear_num_key_heads"]  # exercises head sharing
    total = sum(f.stat().st_size for f in NANO.iterdir() if f.is_file())
    assert total <= 30e6, f"models/nano is {total / 1e6:.1f} MB"


def test_safetensors_keys_are_tied_text_decoder():
    from safetensors import safe_open

    with safe_open(NANO / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor(next(k for k in keys if k.endswith("embed_tokens.weight"))).shape == (8192, 256)
    assert not any(k.startswith("lm_head") for k in keys)  # tied: the table is stored once
    assert sum(k.endswith("linear_attn.A_log") for k in keys) == 6
    assert sum(k.endswith("self_attn.q_norm.weight") for k in keys) == 2


def test_tokenizer_loads_both_ways_and_round_trips(tokenizer):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(NANO / "tokenizer.json"))
    ids = tokenizer(CODE)["input_ids"]
    assert ids == raw.encode(CODE).ids
    assert tokenizer.decode(ids) == CODE
    assert len(ids) < len(CODE) / 2.5  # a trained BPE, not bytes
    assert len(tokenizer) == 8192


def test_special_tokens_match_config(tokenizer):
    cfg = json.loads((NANO / "tokenizer_config.json").read_text())
    declared = {v["content"]: int(k) for k, v in cfg["added_tokens_decoder"].items()}
    for tok, i in SPECIAL.items():
        assert tokenizer.convert_tokens_to_ids(tok) == i
        assert declared[tok] == i
        assert tokenizer(tok)["input_ids"] == [i]  # one piece, never split
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer("Hi")["input_ids"][0] not in SPECIAL.values()  # no BOS added
    gen = json.loads((NANO / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [SPECIAL["<|im_end|>"], SPECIAL["<|endoftext|>"]]


def test_chat_template_renders_chatml(tokenizer):
    msgs = [{"role": "user", "content": "Hi"}]
    # Written from the Qwen3.5 0.8B convention: thinking off by default pre-fills an empty block.
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == expected
    thinking = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=True) == thinking
    ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    (nn,) = tokenizer("\n\n")["input_ids"]
    assert ids[0] == SPECIAL["<|im_start|>"]
    assert ids[-4:] == [SPECIAL["<think>"], nn, SPECIAL["</think>"], nn]


def test_heldout_perplexity_below_bound(model):
    held = json.loads((NANO / "heldout.json").read_text())
    windows = torch.tensor(held["windows"])  # [8, 512], each scored alone
    with torch.inference_mode():
        logits = model(input_ids=windows[:, :-1]).logits  # [8, 511, 8192]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(),
                                                reduction="sum").item()
    ppl = math.exp(nll / held["target_tokens"])
    bpb = nll / math.log(2) / held["target_bytes"]  # tokenizer-independent
    assert ppl < PPL_BOUND and bpb < BPB_BOUND, f"held-out ppl {ppl:.2f}, {bpb:.3f} bits/byte"


def test_greedy_generation_continues_python(greedy_64):
    # 64 tokens, the goal's length: the shipped fine-tune writes a two-line comment and a loop before its `return`
    # (the pre-trained weights returned at once, within 32).
    text = greedy_64("def fibonacci(n):\n    if n < 2:\n")
    # Python structure, which random or mis-loaded weights do not produce: the if-body opens one
    # level deeper (8 spaces), it returns, and every line is indented in steps of 4.
    assert text.startswith("        ") and "return" in text, repr(text)
    lines = [ln for ln in text.split("\n")[:-1] if ln.strip()]  # the last line may be cut mid-way
    assert lines and all((len(ln) - len(ln.lstrip(" "))) % 4 == 0 for ln in lines), repr(text)
    assert "<|" not in text, repr(text)


def test_corpus_manifest_holds_out_whole_permissive_packages():
    corpus = json.loads((NANO / "corpus.json").read_text())
    held = json.loads((NANO / "heldout.json").read_text())
    packages = {p["name"]: p for p in corpus["packages"]}
    held_names = {name for name, p in packages.items() if p["split"] == "heldout"}
    # The evaluation sample is drawn from exactly the held-out packages, and the training side is not empty.
    assert held_names and {spec.split("==")[0] for spec in held["packages"]} == held_names
    assert any(p["split"] == "train" for p in packages.values())
    per_package = {}
    for f in corpus["files"]:
        if ":" in f["path"]:  # package files are "name:path"; stdlib files are plain relative paths
            name = f["path"].split(":")[0]
            assert f["split"] == packages[name]["split"], f  # a package is held out whole, never split
            per_package[name] = per_package.get(name, 0) + 1
    for name, p in packages.items():
        assert p["licence"].split(" ")[0] in ("MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "PSF-2.0"), p
        assert per_package.get(name, 0) == p["files"] > 0, name
    # No held-out package file has the exact text of a training file (a vendored or copied module).
    train_text = {f["sha256_16"] for f in corpus["files"] if f["split"] == "train" and ":" in f["path"]}
    assert not [f["path"] for f in corpus["files"] if f["split"] == "heldout" and f["sha256_16"] in train_text]


# Issue 23's greedy goal. The pre-trained nano (held-out ppl 18.1) looped on the demo prompt (`if n < 2:` / `return n`
# five times), and across its 28 training checkpoints 1 to 4 of the 4 demo prompts looped with no trend. The shipped
# weights add session 19's loop-branch fine-tune (run D, ppl 20.1), which cut greedy continuations failing these rules
# on 128 held-out user-shaped prompts from 79 % to 17 %. It passes these two prompts, but narrowly: its own checkpoints
# passed the second one at 3 of 10 (models/nano/README.md, "Greedy loops"), and `class Stack:` still loops. The file
# is fixed and greedy decoding deterministic, so a failure here means the weights or the decoding path changed.
def test_demo_prompt_greedy_64_tokens_repeat_no_line(greedy_64):
    # The first nano looped ("the file is a string of the file is a string ...") within a few lines; the demo
    # (`qwen-mobile demo`) and the CLI default decode from these prompts.
    for prompt in ("def fibonacci(n):\n    if n < 2:\n", "def fibonacci(n):\n"):
        text = prompt + greedy_64(prompt)
        # A line is compared with its indentation: `return n` in an if-body and after it are two lines of code.
        lines = [ln.rstrip() for ln in text.split("\n")[:-1] if ln.strip()]  # the last line may be cut mid-way
        assert len(lines) >= 3 and len(lines) == len(set(lines)), repr(text)
        # A loop inside one line is still a loop: session 14's `mask-repeats` fine-tune met the line rule above on
        # both prompts by writing `def fibonacci(n, n, n, n, n, ...` instead.
        assert not looping_within_a_line(text), repr(text)


def looping_within_a_line(text: str) -> bool:
    """A piece of text with two or more distinct non-blank characters (`n, `, `self.x`) four times in a row. A piece of one
    character (`----` under a docstring heading, indentation) is layout, not a loop."""
    return any(len(set(piece) - set(" \t\n")) >= 2 for piece, _ in re.findall(r"(.{2,}?)(\1{3,})", text))


def test_looping_within_a_line_tells_loops_from_layout():
    assert looping_within_a_line("def fibonacci(n, n, n, n, n, n")
    assert looping_within_a_line("x = self.a.self.a.self.a.self.a.")
    assert not looping_within_a_line("    Parameters\n    ----------\n        n : int\n")
    assert not looping_within_a_line("            return fibonacci(n - 1) + fibonacci(n - 2)\n")
    assert not looping_within_a_line("a, b, c = 1, 1, 1\n")  # three in a row is ordinary code
