"""Cross-language test vectors for the sample apps (Android Java, iOS Swift): tokenizers, ChatML, sampling.

Every expected value here comes from the Python reference the apps must agree with: Hugging Face `tokenizers` for
text <-> ids, runtime/chat.py for the chat template, runtime/sampling.py (the portable rule, /work/notes/sampling_spec.md
and runtime/SAMPLING.md) for sampling. The apps' unit tests read the committed files; tests/apps/test_vectors.py
regenerates them into a temporary folder and fails on any drift.

    python tests/apps/make_vectors.py                      # rewrite tests/apps/vectors/*.json
    python tests/apps/make_vectors.py --out /tmp/v         # somewhere else (what the test does)
    python tests/apps/make_vectors.py --retrain-tokenizer  # also retrain vectors/qwenlike_tokenizer.json

File formats (keep them stable: the iOS app reads the same files):
  tokenizer_<name>.json  {"tokenizer": "<tokenizer.json, relative to the repo root>",
                          "cases": [{"text", "ids", "decoded"}]}
                         ids = encode(text, add_special_tokens=False); decoded = decode(ids, skip_special_tokens=False)
  pretokenize.json       {"cases": [{"text", "pieces_nano", "pieces_qwenlike"}]}: the pre-tokenizer's pieces (byte-level
                         characters) of the NFC text without added tokens: the regex split alone, which ids can hide
  chat_template.json     {"cases": [{"messages": [{"role", "content"}], "enable_thinking", "add_generation_prompt",
                          "text", "ids_nano"}]}
  sampling.json          {"cases": [{"name", "logits": [float32 values], "context", "config": {"temperature", "top_k",
                          "top_p", "repetition_penalty", "seed"}, "tokens"}]}: tokens = successive draws of ONE sampler
                          on the same logits and context
  manifest_cases.json    {"cases": [{"name", "manifest", "valid", "field"}]}: field = the jsonschema error path
                          ("/"-joined, "(top level)" at the root) of an invalid manifest, null for a valid one
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VECTORS = Path(__file__).resolve().parent / "vectors"
NANO_TOKENIZER = "models/nano/tokenizer.json"
QWENLIKE_TOKENIZER = "tests/apps/vectors/qwenlike_tokenizer.json"

# Qwen2 / Qwen3's pre-tokenizer split (their tokenizer.json "Split" pattern). models/nano uses Qwen3.5's variant,
# which also groups combining marks (\p{M}) with letters; the two tokenizers together cover both.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NOT_SPECIAL_ADDED = ["<think>", "</think>"]  # Qwen3 marks these special: false (they stay in decoded text)

# The training corpus of the Qwen-like tokenizer: a little of many scripts, emoji and code, so merges exist for each.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's a sunny day, isn't it? We'll see what they've done.",
    "Machine learning models run on phones when they are quantized: int4 weights, int8 activations, fp32 accumulators.",
    "Die Größe der Äpfel über dem Öl ist erstaunlich; naïve Cafés servieren Crème brûlée.",
    "Le petit déjeuner est prêt à sept heures et demie. Où êtes-vous allés hier soir ?",
    "El niño pequeño comió mañana una piña en el año dos mil. ¿Qué tal? ¡Muy bien!",
    "你好，世界！今天天气很好，我们去公园散步吧。机器学习模型可以在手机上运行。",
    "こんにちは、世界。カタカナとひらがなと漢字を混ぜて書きます。東京は大きな都市です。",
    "안녕하세요 세계! 오늘 날씨가 정말 좋네요. 한국어 문장입니다.",
    "Привет, мир! Как дела? Сегодня хорошая погода, и мы пойдём гулять в парк.",
    "مرحبا بالعالم، كيف حالك اليوم؟ الطقس جميل جدا.",
    "नमस्ते दुनिया, आज मौसम बहुत अच्छा है। हिन्दी में वाक्य।",
    "Γειά σου κόσμε! Η γλώσσα είναι ελληνική. שלום עולם. สวัสดีชาวโลก",
    "Emoji: 😀 😃 😄 👍 👍🏽 ❤️ 🐍 🚀 🎉 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻 🇩🇪 🇯🇵 ✨🔥💯",
    "def square(x):\n    return x ** 2\n\nfor i in range(10):\n    print(square(i))\n",
    "class Tokenizer:\n    def __init__(self, path: str) -> None:\n        self.path = path  # where tokenizer.json is\n",
    "int main(int argc, char** argv) {\n\tprintf(\"%d\\n\", argc);\n\treturn 0;\n}\n",
    "const f = (a, b) => { return a + b; }; let xs = [1, 2, 3].map(x => x * 2);",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159 2.71828 1,000,000 1e-5 0x1F 50% $19.99 €5",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n",
    "<|im_start|>assistant\n<think>\nThe user greets me.\n</think>\n\nHello! How can I help?<|im_end|>\n",
    "    indented    with    spaces\t\ttabs\n\n\nand blank lines\r\nwindows line ends   \n",
]

# Shared by both tokenizers: every class of input the apps meet. Texts are kept unnormalised on purpose (the NFC
# case) and include near-misses of special tokens.
TOKENIZER_TEXTS = [
    "",
    "Hello, world! How's it going? I'LL BE THERE, they'Re SURE.",
    "Größenverhältnisse über Äpfel und Öl — naïve café, crème brûlée",
    "El niño comió piña mañana. ¿Qué tal?",
    "你好，世界！今天天气很好。",
    "こんにちは、世界。カタカナとひらがな",
    "안녕하세요 세계",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "नमस्ते दुनिया, हिन्दी",
    "I ❤️ 🐍 and 👍🏽!",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🧑🏿‍💻 coder, 🇩🇪🇯🇵",
    "def f(x):\n    return x**2  # square\n\nfor i in range(10):\n\tprint(f(i))\n",
    'int main() { printf("%d\\n", 42); return 0; }',
    "a  b   c    d\n\n\n  e\t\t f \r\n g   ",
    "   leading and trailing   ",
    "\n\n\n",
    "3.14159 1234567890 1,000,000 0x1F 2e-10 ½ ٣ Ⅻ ²",
    "The price is $1,299.99 (≈€1.200) — 50% off!!!",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nok<|im_end|><|endoftext|>",
    "x<think>y</think>z<|im_end|>",
    "<|im_start|<think ><|im_end|>>",
    "a\u00a0b\u3000c\u2028d\u200be\u2009f",
    "wide\u3000\u3000\u3000gap\u00a0\u00a0\u00a0end\u2003\u2003 \u2003",
    "e\u0301 vs \u00e9; A\u030a",
    "don't WE'LL they'Re it'S 'ſ",
    "supercalifragilisticexpialidocious" * 3,
    "Γειά σου κόσμε! שלום עולם. สวัสดีชาวโลก",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝟙𝟚𝟛",
]

# Splits where Unicode whitespace and case folding matter (Java's \\s is ASCII-only without UNICODE_CHARACTER_CLASS).
PRETOKENIZE_ONLY = [
    "x\u00a0\u00a0y",
    "x\u3000\u3000\u3000y \u2003\u2003",
    "tab\t\u0085next\u2028line\u2029para",
    "IT'S 'ſ 'K 'Ｓ it'ſx we'ſt",
]

CHAT_CASES = [
    ([{"role": "user", "content": "Hello!"}], False, True),
    ([{"role": "user", "content": "Hello!"}], True, True),
    ([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}],
     False, True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}], False, True),
    ([{"role": "user", "content": "Think about it: 17 × 3?"},
      {"role": "assistant", "content": "17 × 3 = 51.\n</think>\n\n51"}, {"role": "user", "content": "And × 4?"}],
     True, True),
    ([{"role": "user", "content": "你好 👋 def f(): pass"}], False, False),
    ([{"role": "user", "content": "no prompt"}, {"role": "assistant", "content": "ok"}], False, False),
    ([{"role": "user", "content": ""}], False, True),
]


def float32(x: float) -> float:
    """The float64 value of x rounded to float32 (exact in JSON, exact again when parsed back into a float32)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def train_qwenlike(path: Path) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NOT_SPECIAL_ADDED])
    tmp = path.with_name(f".{path.name}.tmp")
    tok.save(str(tmp), pretty=False)
    os.replace(tmp, path)


def tokenizer_cases(tokenizer_rel: str) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(REPO / tokenizer_rel))
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    return {"tokenizer": tokenizer_rel, "cases": cases}


def pretokenize_cases() -> dict:
    """The split alone: two regexes can disagree on a split the BPE merges then hide (no merge crosses it)."""
    from tokenizers import Tokenizer

    toks = {name: Tokenizer.from_file(str(REPO / rel)) for name, rel in (("nano", NANO_TOKENIZER),
                                                                          ("qwenlike", QWENLIKE_TOKENIZER))}
    cases = []
    for text in TOKENIZER_TEXTS + PRETOKENIZE_ONLY:
        if any(t in text for t in SPECIAL + NOT_SPECIAL_ADDED):
            continue
        case = {"text": text}
        for name, tok in toks.items():
            normalized = tok.normalizer.normalize_str(text)
            case[f"pieces_{name}"] = [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(normalized)]
        cases.append(case)
    return {"cases": cases}


def render_chat(messages: list[dict], thinking: bool, add_generation_prompt: bool) -> str:
    """The text a chat session of runtime/chat.py feeds for this conversation.

    system -> ChatTemplate.system; user -> its turn; assistant -> the generation prompt the session fed, then the
    reply as generated, its <|im_end|>, and close_assistant(True); a final generation prompt when asked.
    """
    from qwen_mobile.runtime.chat import IM_END, IM_START, ChatTemplate

    t = ChatTemplate(thinking=thinking)
    out = ""
    for m in messages:
        if m["role"] == "system":
            out += t.system(m["content"])
        elif m["role"] == "user":
            out += f"{IM_START}user\n{m['content']}{IM_END}\n"
        elif m["role"] == "assistant":
            out += t.generation_prompt() + m["content"] + IM_END + ChatTemplate.close_assistant(True)
        else:
            raise ValueError(f"role {m['role']!r}: the template has system, user and assistant turns")
    if add_generation_prompt:
        out += t.generation_prompt()
    # The chat command renders a user turn with its prompt in one call: check the composition above against it.
    if messages and messages[-1]["role"] == "user" and add_generation_prompt:
        assert out.endswith(t.user(messages[-1]["content"])), "render_chat disagrees with ChatTemplate.user"
    return out


def chat_cases() -> dict:
    from tokenizers import Tokenizer

    nano = Tokenizer.from_file(str(REPO / NANO_TOKENIZER))
    cases = []
    for messages, thinking, add_gen in CHAT_CASES:
        text = render_chat(messages, thinking, add_gen)
        cases.append({"messages": messages, "enable_thinking": thinking, "add_generation_prompt": add_gen,
                      "text": text, "ids_nano": nano.encode(text, add_special_tokens=False).ids})
    return {"cases": cases}


def sampling_cases() -> dict:
    import torch
    from qwen_mobile.runtime import sampling

    source = Path(sampling.__file__).read_text()
    if "SplitMix" not in source:
        raise SystemExit("runtime/sampling.py does not implement the portable rule yet (no SplitMix64): "
                         "sampling.json cannot be generated")
    g = torch.Generator().manual_seed(1234)
    rand = (torch.randn(64, generator=g) * 3).tolist()
    tie = [0.5, 2.0, -1.0, 2.0, 1.0, 2.0, -3.0, 0.25]
    neg = [-1.0, -0.5, -2.0, 0.5, -0.25, 1.5, -4.0, 0.0]
    spec = [
        # name, logits, context, temperature, top_k, top_p, repetition_penalty, seed
        ("greedy_ties_lowest_index", tie, [], 0.0, 0, 1.0, 1.0, 0),
        ("greedy_repetition_penalty_moves_argmax", neg, [5, 6, 5], 0.0, 0, 1.0, 4.0, 0),
        ("temperature_only", rand, [], 0.8, 0, 1.0, 1.0, 7),
        ("temperature_high", rand, [], 2.5, 0, 1.0, 1.0, 8),
        ("top_k_ties_survive", tie, [], 1.0, 2, 1.0, 1.0, 3),
        ("top_k_1", rand, [], 1.0, 1, 1.0, 1.0, 4),
        ("top_k_equals_vocab", tie, [], 1.0, 8, 1.0, 1.0, 5),
        ("top_p_small_keeps_top", rand, [], 1.0, 0, 0.01, 1.0, 9),
        ("top_p_half", rand, [], 0.7, 0, 0.5, 1.0, 10),
        ("top_p_ties", tie, [], 1.0, 0, 0.6, 1.0, 11),
        ("top_p_0_999", rand, [], 1.0, 0, 0.999, 1.0, 12),
        ("top_k_and_top_p", rand, [], 0.9, 10, 0.8, 1.0, 13),
        ("repetition_penalty_negative_logits", neg, [0, 1, 2, 6, 6], 1.0, 0, 1.0, 1.3, 14),
        ("repetition_penalty_below_one", neg, [3, 5], 1.0, 0, 1.0, 0.7, 15),
        ("all_filters", rand, [1, 2, 3, 10, 20, 30, 2], 0.6, 20, 0.9, 1.2, 16),
        ("seed_large_uint64", rand, [], 1.0, 0, 1.0, 1.0, 2**64 - 1),
        ("neg_inf_logit", [float("-inf"), 1.0, 0.0, 1.0], [], 1.0, 0, 1.0, 1.0, 17),
    ]
    cases = []
    for name, logits, context, temperature, top_k, top_p, rp, seed in spec:
        logits32 = [float32(v) for v in logits]
        cfg = sampling.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=rp,
                                      seed=seed)
        sampler = sampling.Sampler(cfg)
        t = torch.tensor(logits32, dtype=torch.float32)
        tokens = [int(sampler(t, list(context))) for _ in range(8)]
        cases.append({"name": name, "logits": logits32, "context": context,
                      "config": {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                                 "repetition_penalty": rp, "seed": seed},
                      "tokens": tokens})
    return {"cases": cases}


def good_manifest() -> dict:
    """A complete version-2 manifest of the shape export writes (two methods plus the state ones, hashes)."""
    state_method = {"inputs": [], "outputs": [{"name": "state", "shape": [4096], "dtype": "float32"}],
                    "kind": "state_read"}
    return {
        "schema_version": 2, "format": "qwen-mobile-bundle", "toolkit_version": "0.1.0",
        "created_utc": "2026-12-03T19:00:00Z",
        "model": {"id": "nano", "source": "models/nano", "size": None, "params": 9400000, "random_weights": False,
                  "config": {"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 4,
                             "layer_types": ["linear_attention", "linear_attention", "linear_attention",
                                             "full_attention"]}},
        "recipe": {"name": "xnnpack", "backend": "xnnpack", "preset": "xnnpack-8da4w", "qlinear": "8da4w",
                   "qembedding": "4w", "group_size": 32, "tied_table_copies": 1},
        "program": {"file": "model.pte", "op_namespace": "qwen35", "kernel_namespaces": ["qwen35", "quantized_decomposed"],
                    "methods": {
                        "forward": {"inputs": [{"name": "tokens", "shape": [1, "T"], "dtype": "int64"},
                                               {"name": "input_pos", "shape": [1], "dtype": "int64"}],
                                    "outputs": [{"name": "logits", "shape": [1, "T", 8192], "dtype": "float32"}],
                                    "min_tokens": 1, "max_tokens": 64, "kind": "prefill",
                                    "resets_state_at_position_0": True},
                        "decode_token": {"inputs": [{"name": "tokens", "shape": [1, 1], "dtype": "int64"},
                                                    {"name": "input_pos", "shape": [1], "dtype": "int64"}],
                                         "outputs": [{"name": "logits", "shape": [1, 1, 8192], "dtype": "float32"}],
                                         "min_tokens": 1, "max_tokens": 1, "kind": "decode"},
                        "state_read": state_method,
                        "state_write": dict(state_method, kind="state_write"),
                    }},
        "state": {"max_seq_len": 512, "max_batch_size": 1, "shared_between_methods": True,
                  "reset": "forward at input_pos 0",
                  "buffers": [{"name": "k_cache_3", "shape": [1, 2, 512, 64], "dtype": "float32", "seq_axis": 2},
                              {"name": "recurrent_0", "shape": [1, 4, 64, 64], "dtype": "float32", "seq_axis": None}]},
        "tokenizer": {"file": "tokenizer.json", "config_file": "tokenizer_config.json", "bos_id": None,
                      "stop_ids": [8168, 8166], "thinking_default": False},
        "files": {"model.pte": {"sha256": "a" * 64, "bytes": 1234},
                  "tokenizer.json": {"sha256": "0123456789abcdef" * 4, "bytes": 56}},
        "sample_prompt": {"ids": [8167, 872, 198], "text": "<|im_start|>user\n"},
    }


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    keys = path.split("/")
    node = doc
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()

# (name, path, new value or _DELETE). Each breaks exactly one rule of runtime/schemas/manifest.schema.json.
MANIFEST_MUTATIONS = [
    ("missing_schema_version", "schema_version", _DELETE),
    ("schema_version_1", "schema_version", 1),
    ("wrong_format", "format", "some-other-bundle"),
    ("missing_model", "model", _DELETE),
    ("model_id_empty", "model/id", ""),
    ("model_params_zero", "model/params", 0),
    ("model_params_string", "model/params", "9.4M"),
    ("model_config_without_vocab", "model/config/vocab_size", _DELETE),
    ("recipe_unknown_name", "recipe/name", "tflite"),
    ("recipe_unknown_qlinear", "recipe/qlinear", "3w"),
    ("recipe_group_size_48", "recipe/group_size", 48),
    ("recipe_tied_copies_3", "recipe/tied_table_copies", 3),
    ("program_missing_methods", "program/methods", _DELETE),
    ("program_missing_decode_token", "program/methods/decode_token", _DELETE),
    ("program_op_namespace", "program/op_namespace", "llama"),
    ("prefill_without_max_tokens", "program/methods/forward/max_tokens", _DELETE),
    ("method_kind_unknown", "program/methods/forward/kind", "train"),
    ("state_max_seq_len_zero", "state/max_seq_len", 0),
    ("state_batch_2", "state/max_batch_size", 2),
    ("state_not_shared", "state/shared_between_methods", False),
    ("buffer_shape_zero", "state/buffers/0/shape", [1, 0, 512, 64]),
    ("tokenizer_stop_id_string", "tokenizer/stop_ids", ["<|im_end|>"]),
    ("tokenizer_missing_stop_ids", "tokenizer/stop_ids", _DELETE),
    ("tokenizer_thinking_string", "tokenizer/thinking_default", "yes"),
    ("files_empty", "files", {}),
    ("file_sha256_uppercase", "files/model.pte/sha256", "A" * 64),
    ("file_sha256_short", "files/model.pte/sha256", "abc"),
    ("file_bytes_negative", "files/model.pte/bytes", -1),
    ("file_missing_bytes", "files/tokenizer.json/bytes", _DELETE),
    ("sample_prompt_negative_id", "sample_prompt/ids/1", -5),
    ("sample_prompt_empty", "sample_prompt/ids", []),
]


def manifest_cases() -> dict:
    import jsonschema

    schema = json.loads((REPO / "runtime/schemas/manifest.schema.json").read_text())
    good = good_manifest()
    coreml = _set(_set(good, "recipe/name", "coreml"), "recipe/backend", "coreml")
    cases = [("good", good), ("good_coreml", coreml), ("good_without_optional", _set(_set(good, "sample_prompt", _DELETE),
                                                                                       "created_utc", _DELETE))]
    cases += [(name, _set(good, path, value)) for name, path, value in MANIFEST_MUTATIONS]
    out = []
    for name, doc in cases:
        try:
            jsonschema.validate(doc, schema)
            field = None
        except jsonschema.ValidationError as err:
            field = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        if name.startswith("good") != (field is None):
            raise SystemExit(f"manifest case {name}: expected {'valid' if name.startswith('good') else 'invalid'}, "
                             f"jsonschema says field={field}")
        out.append({"name": name, "manifest": doc, "valid": field is None, "field": field})
    return {"cases": out}


def dump(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=VECTORS, help="folder for the case files (default: %(default)s)")
    ap.add_argument("--retrain-tokenizer", action="store_true",
                    help=f"retrain {QWENLIKE_TOKENIZER} (else it is trained only when missing)")
    ap.add_argument("--skip-sampling", action="store_true",
                    help="leave sampling.json out (before runtime/sampling.py has the portable rule)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    qwenlike = REPO / QWENLIKE_TOKENIZER
    if args.retrain_tokenizer or not qwenlike.exists():
        train_qwenlike(qwenlike)
    dump(args.out / "tokenizer_nano.json", tokenizer_cases(NANO_TOKENIZER))
    dump(args.out / "tokenizer_qwenlike.json", tokenizer_cases(QWENLIKE_TOKENIZER))
    dump(args.out / "pretokenize.json", pretokenize_cases())
    dump(args.out / "chat_template.json", chat_cases())
    dump(args.out / "manifest_cases.json", manifest_cases())
    if not args.skip_sampling:
        dump(args.out / "sampling.json", sampling_cases())
    return 0


if __name__ == "__main__":
    sys.exit(main())
