"""Corpus and tokenizer for the nano checkpoint (not run in CI).

    python models/nano/prepare.py [--data /tmp/nano_data]

The corpus is the Python standard library that ships with the interpreter running this script
(PSF licence), found through ``sysconfig`` because ``sys.prefix`` differs between machines.
Files are sorted and filtered (no test suites, site-packages or generated tables), and a fixed 5 % of
them, chosen by a hash of the relative path, is held out for evaluation.

Writes into ``models/nano/``: ``tokenizer.json``, ``tokenizer_config.json``, ``corpus.json`` (Python
version and every file used, with its split) and ``heldout.json`` (the held-out files and a fixed
evaluation sample of token ids, so later quality gates need no corpus). Writes the token streams of
both splits into ``--data`` as uint16 ``.npy`` files for ``train.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sysconfig
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

HERE = Path(__file__).resolve().parent

VOCAB_SIZE = 8192
# Qwen3's added tokens, in Qwen's order (Qwen3.5: ids 248044-248069). Qwen3.5's seven audio/TTS
# tokens that follow are left out: their exact strings are unverified here and a text model never
# emits them. The "special" flag follows Qwen: think/tool markers are plain added tokens, so
# decode(skip_special_tokens=True) keeps them.
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
BPE_VOCAB_SIZE = VOCAB_SIZE - len(ADDED_TOKENS)  # BPE ids first, added tokens last, as in Qwen

# Qwen3.5's split regex (transformers tokenization_qwen3_5.py): letter runs absorb combining marks.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"""
    r"""| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Written by hand to the Qwen3.5 0.8B conventions (architecture notes, section 5): ChatML turns,
# thinking off by default (an empty think block is pre-filled), `enable_thinking=true` opens
# `<think>\n`, and assistant turns before the last user turn drop their reasoning.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- set content = m.content if m.content is string else '' -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}"
    "{%- set content = content.split('</think>')[-1] -%}"
    "{%- endif -%}"
    "{%- set reasoning = reasoning.strip('\\n') -%}{%- set content = content.lstrip('\\n') -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last_user -%}{{- '<think>\\n' + reasoning + '\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- content + '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\\n' -}}"
    "{%- else -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

# Directories skipped anywhere in the tree, and why.
EXCLUDED_DIRS = {
    "test": "test suite",
    "tests": "test suite",
    "idle_test": "test suite",
    "site-packages": "third-party packages, differ per machine",
    "__pycache__": "bytecode",
    "lib-dynload": "extension modules",
    "encodings": "generated codec tables",
    "pydoc_data": "one generated 700 KB string of documentation",
}
HELDOUT_MODULUS = 20  # a file is held out when sha1(relative path) % 20 == 0, about 5 %
EVAL_WINDOWS = 8  # fixed evaluation sample: 8 windows of SEQ_LEN tokens from the held-out stream
SEQ_LEN = 512  # the training context


def corpus_files(stdlib: Path) -> list[str]:
    """Sorted relative paths of the stdlib .py files used, after the exclusions above."""
    out = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        parts = rel.parts
        if any(p in EXCLUDED_DIRS or p.startswith("config-") for p in parts[:-1]):
            continue
        name = parts[-1]
        if name.startswith("test_") or name.startswith("_sysconfigdata_"):  # tests; machine-specific
            continue
        out.append(rel.as_posix())
    return out


def is_heldout(rel: str) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % HELDOUT_MODULUS == 0


def build_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                        fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == BPE_VOCAB_SIZE, tok.get_vocab_size()
    for content, special in ADDED_TOKENS:  # one at a time, so ids follow ADDED_TOKENS' order
        t = AddedToken(content, special=special, normalized=False, single_word=False,
                       lstrip=False, rstrip=False)
        (tok.add_special_tokens if special else tok.add_tokens)([t])
    assert tok.get_vocab_size() == VOCAB_SIZE
    return tok


def tokenizer_config(tok: Tokenizer) -> dict:
    decoder = {}
    for content, special in ADDED_TOKENS:
        decoder[str(tok.token_to_id(content))] = {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special,
        }
    return {
        # The generic class loads tokenizer.json verbatim (transformers 4 and 5); a model-specific
        # class would rebuild the pipeline from vocab/merges.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 262144,
        "added_tokens_decoder": decoder,
        "chat_template": CHAT_TEMPLATE,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/nano_data"), help="token streams (not committed)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = corpus_files(stdlib)
    texts = {rel: (stdlib / rel).read_text(encoding="utf-8") for rel in files}  # PEP 3120: UTF-8
    train = [rel for rel in files if not is_heldout(rel)]
    held = [rel for rel in files if is_heldout(rel)]
    print(f"python {platform.python_version()} stdlib {stdlib}: {len(files)} files, "
          f"{len(train)} train / {len(held)} held out, {sum(len(t.encode()) for t in texts.values())} bytes")

    tok = build_tokenizer([texts[rel] for rel in train])
    eot = tok.token_to_id("<|endoftext|>")
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    (args.out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2) + "\n")

    # Each file is one document followed by <|endoftext|>, as in Qwen's pretraining format.
    def stream(rels: list[str]) -> np.ndarray:
        ids = []
        for enc in tok.encode_batch([texts[rel] for rel in rels], add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(eot)
        return np.asarray(ids, dtype=np.uint16)

    args.data.mkdir(parents=True, exist_ok=True)
    train_ids, held_ids = stream(train), stream(held)
    np.save(args.data / "train.npy", train_ids)
    np.save(args.data / "heldout.npy", held_ids)
    train_bytes = sum(len(texts[r].encode()) for r in train)
    held_bytes = sum(len(texts[r].encode()) for r in held)
    print(f"tokens: train {len(train_ids)} ({train_bytes / len(train_ids):.2f} bytes/token), "
          f"held out {len(held_ids)} ({held_bytes / len(held_ids):.2f} bytes/token)")

    def sha(rel: str) -> str:
        return hashlib.sha256(texts[rel].encode()).hexdigest()[:16]

    corpus = {
        "source": "CPython standard library (*.py), PSF License Agreement",
        "python_version": platform.python_version(),
        "stdlib": "sysconfig.get_paths()['stdlib']",
        "excluded_dirs": EXCLUDED_DIRS,
        "excluded_files": ["test_*.py (tests)", "_sysconfigdata_*.py (machine-specific)"],
        "heldout_rule": f"int(sha1(relative path)[:8], 16) % {HELDOUT_MODULUS} == 0",
        "train_tokens": int(len(train_ids)), "train_bytes": train_bytes,
        "heldout_tokens": int(len(held_ids)), "heldout_bytes": held_bytes,
        "files": [{"path": rel, "split": "heldout" if is_heldout(rel) else "train", "sha256_16": sha(rel)}
                  for rel in files],
    }
    (args.out / "corpus.json").write_text(json.dumps(corpus, indent=0) + "\n")

    # Fixed evaluation sample: EVAL_WINDOWS windows spread evenly over the held-out stream. Each window
    # is scored on its own (no context before it): tokens 1..SEQ_LEN-1 are predicted from the prefix.
    stride = (len(held_ids) - SEQ_LEN) // (EVAL_WINDOWS - 1)
    windows = [held_ids[i * stride: i * stride + SEQ_LEN].tolist() for i in range(EVAL_WINDOWS)]
    # UTF-8 bytes of the predicted tokens (byte-level BPE: each token is a whole number of bytes).
    decoder_bytes = _token_bytes(tok)
    target_bytes = sum(len(decoder_bytes[t]) for w in windows for t in w[1:])
    heldout = {
        "python_version": platform.python_version(),
        "files": held,
        "seq_len": SEQ_LEN,
        "windows": windows,
        "target_tokens": sum(len(w) - 1 for w in windows),
        "target_bytes": target_bytes,
        "note": "score each window alone; predict w[1:] from w[:-1]; bits/byte = sum NLL / ln 2 / target_bytes",
    }
    (args.out / "heldout.json").write_text(json.dumps(heldout, separators=(",", ":")) + "\n")
    print(f"eval sample: {heldout['target_tokens']} target tokens, {target_bytes} bytes")


def _token_bytes(tok: Tokenizer) -> dict[int, bytes]:
    """The raw bytes of every token id. Added tokens (<|endoftext|> between files) are not text and
    count as 0 bytes; their loss still counts, which makes bits/byte slightly pessimistic."""
    byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
    out = {}
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        if i >= BPE_VOCAB_SIZE:
            out[i] = b""
        else:
            out[i] = bytes(byte_decoder[c] for c in piece)
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-printable-character table used by ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


if __name__ == "__main__":
    main()
