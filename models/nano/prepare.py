"""Corpus and tokenizer for the nano checkpoint (not run in CI).

    python models/nano/prepare.py [--data /tmp/nano_data] [--cache ~/.cache/qwen_mobile/nano-corpus]

The corpus has two parts:

* the Python standard library that ships with the interpreter running this script (PSF licence),
  found through ``sysconfig`` because ``sys.prefix`` differs between machines. Files are sorted and
  filtered (no test suites, site-packages or generated tables), and a fixed 5 % of them, chosen by a
  hash of the relative path, is held out. The tokenizer is trained on the stdlib train files only
  (as for the first nano), so it is the same tokenizer and per-token scores stay comparable.
* the ``*.py`` files of the pinned pure-Python packages in ``PACKAGES`` (PSF, BSD, MIT or Apache-2.0
  licences only), downloaded as wheels with ``pip download --no-deps`` into ``--cache`` (outside the
  repo; nothing downloaded is committed). Whole packages are held out (``split="heldout"``): the
  model never trains on them, and they are what the goal "perplexity on unseen packages" measures.

Writes into ``models/nano/``: ``tokenizer.json``, ``tokenizer_config.json``, ``corpus.json`` (the
manifest: Python version, every package with version, licence, wheel sha256, file count and split,
and every file with its split and a sha256 prefix) and ``heldout.json`` (a fixed evaluation sample
of token ids from the held-out packages, so later quality gates need no corpus). Writes the token
streams into ``--data`` as uint16 ``.npy`` files for ``train.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
)
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
# Pinned packages: (name, version, licence as declared by the project, split). Pure Python (or with
# pure-Python sources in the wheel); only permissive licences. Held out, whole: requests, click,
# markdown: three unrelated styles (HTTP client, CLI toolkit, text processor) a user would try.
PACKAGES = [
    ("attrs", "26.1.0", "MIT", "train"),
    ("black", "26.10.1", "MIT", "train"),
    ("django", "6.1.3", "BSD-3-Clause", "train"),
    ("flask", "3.1.3", "BSD-3-Clause", "train"),
    ("httpx", "0.28.1", "BSD-3-Clause", "train"),
    ("ipython", "9.18.1", "BSD-3-Clause", "train"),
    ("jedi", "0.20.1", "MIT", "train"),
    ("jinja2", "3.1.6", "BSD-3-Clause", "train"),
    ("networkx", "3.7", "BSD-3-Clause", "train"),
    ("packaging", "26.3", "Apache-2.0 OR BSD-2-Clause", "train"),
    ("parso", "0.8.7", "MIT", "train"),
    ("prompt-toolkit", "3.0.53", "BSD-3-Clause", "train"),
    ("pygments", "2.21.0", "BSD-2-Clause", "train"),
    ("pyparsing", "3.3.3", "MIT", "train"),
    ("pytest", "9.2.0", "MIT", "train"),
    ("rich", "15.0.0", "MIT", "train"),
    ("scrapy", "2.19.0", "BSD-3-Clause", "train"),
    ("setuptools", "84.2.1", "MIT", "train"),
    ("six", "1.17.0", "MIT", "train"),
    ("sphinx", "9.2.0", "BSD-2-Clause", "train"),
    ("sqlalchemy", "2.1.9", "MIT", "train"),
    ("starlette", "1.10.0", "BSD-3-Clause", "train"),
    ("sympy", "1.14.0", "BSD-3-Clause", "train"),
    ("tomli", "2.5.0", "MIT", "train"),
    ("traitlets", "5.16.1", "BSD-3-Clause", "train"),
    ("twisted", "26.10.0", "MIT", "train"),
    ("urllib3", "2.8.0", "MIT", "train"),
    ("werkzeug", "3.1.9", "BSD-3-Clause", "train"),
    ("click", "8.5.1", "BSD-3-Clause", "heldout"),
    ("markdown", "3.11.3", "BSD-3-Clause", "heldout"),
    ("requests", "2.34.2", "Apache-2.0", "heldout"),
]
ALLOWED_LICENCES = ("MIT", "BSD", "Apache-2.0", "PSF")
# Package directories skipped besides EXCLUDED_DIRS: vendored copies of other projects (pip-style
# _vendor trees could carry a held-out package into training) and bundled data.
EXCLUDED_PACKAGE_DIRS = {"_vendor", "vendor", "vendored", "extern", "_distutils", "locale"}
MAX_FILE_BYTES = 200_000  # larger .py files are generated tables (unicode data, lexer maps)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen_mobile" / "nano-corpus"
HELDOUT_MODULUS = 20  # a file is held out when sha1(relative path) % 20 == 0, about 5 %
EVAL_WINDOWS = 8  # fixed evaluation sample: 8 windows of SEQ_LEN tokens from the held-out packages
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


def download_wheel(name: str, version: str, cache: Path) -> Path:
    """The wheel of name==version in cache, downloaded with pip if missing. Any Python tag is accepted
    (``--python-version 3.13``: django 6 needs >= 3.12); only its .py sources are read, never run."""
    cache.mkdir(parents=True, exist_ok=True)
    norm = name.replace("-", "_").lower()

    def find() -> list[Path]:
        return [p for p in cache.glob("*.whl")
                if p.name.lower().startswith(f"{norm}-{version}-")]

    if not find():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--python-version", "3.13", "--dest", str(cache), "--quiet", f"{name}=={version}"]
        subprocess.run(cmd, check=True)
    found = sorted(find())
    if not found:
        raise SystemExit(f"prepare.py: pip downloaded no wheel for {name}=={version} into {cache}")
    return found[0]


def wheel_sources(wheel: Path) -> tuple[dict[str, str], str]:
    """The wheel's .py files after the exclusions (path -> text), and the licence its METADATA states."""
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode("utf-8", "replace"), headersonly=True)
        classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
        licence_lines = (meta.get("License") or "").strip().splitlines()
        licence = meta.get("License-Expression") or "; ".join(classifiers) or (licence_lines[0][:80] if licence_lines else "")
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            rel = info.filename
            parts = rel.split("/")
            if not rel.endswith(".py") or info.file_size > MAX_FILE_BYTES:
                continue
            if any(p in EXCLUDED_DIRS or p in EXCLUDED_PACKAGE_DIRS or p.endswith(".data") for p in parts[:-1]):
                continue
            if parts[-1].startswith("test_") or parts[-1].endswith("_test.py") or parts[-1] == "conftest.py":
                continue
            try:
                out[rel] = zf.read(info).decode("utf-8")
            except UnicodeDecodeError:  # a latin-1 source; not worth a special case
                continue
    return out, licence


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
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="downloaded wheels (not committed)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = corpus_files(stdlib)
    texts = {rel: (stdlib / rel).read_text(encoding="utf-8") for rel in files}  # PEP 3120: UTF-8
    train = [rel for rel in files if not is_heldout(rel)]
    held = [rel for rel in files if is_heldout(rel)]
    print(f"python {platform.python_version()} stdlib {stdlib}: {len(files)} files, "
          f"{len(train)} train / {len(held)} held out, {sum(len(t.encode()) for t in texts.values())} bytes")

    # The tokenizer is the first nano's: trained on the stdlib train files only, so token ids, the
    # app test vectors and per-token scores of old and new checkpoints stay comparable.
    tok = build_tokenizer([texts[rel] for rel in train])
    eot = tok.token_to_id("<|endoftext|>")
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    (args.out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2) + "\n")

    packages, seen = [], {}
    pkg_texts: dict[str, dict[str, str]] = {}
    for name, version, licence, split in PACKAGES:
        if not licence.startswith(ALLOWED_LICENCES):
            raise SystemExit(f"prepare.py: PACKAGES entry {name}: licence {licence!r} is not permissive")
        wheel = download_wheel(name, version, args.cache)
        sources, meta_licence = wheel_sources(wheel)
        kept = {}
        for rel, text in sources.items():
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:  # the same file shipped twice (copies between packages): keep the first
                continue
            seen[digest] = name
            kept[rel] = text
        pkg_texts[name] = kept
        packages.append({
            "name": name, "version": version, "licence": licence, "metadata_licence": meta_licence,
            "split": split, "wheel": wheel.name,
            "wheel_sha256_16": hashlib.sha256(wheel.read_bytes()).hexdigest()[:16],
            "files": len(kept), "bytes": sum(len(t.encode()) for t in kept.values()),
        })
        print(f"  {name}=={version} ({licence}; metadata: {meta_licence}) {split}: "
              f"{len(kept)} files, {packages[-1]['bytes']:,} bytes", flush=True)

    # Each file is one document followed by <|endoftext|>, as in Qwen's pretraining format.
    def stream(docs: list[str]) -> np.ndarray:
        ids = []
        for enc in tok.encode_batch(docs, add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(eot)
        return np.asarray(ids, dtype=np.uint16)

    train_docs = [texts[rel] for rel in train]
    held_pkg_docs = []
    for p in packages:
        docs = [pkg_texts[p["name"]][rel] for rel in sorted(pkg_texts[p["name"]])]
        (train_docs if p["split"] == "train" else held_pkg_docs).extend(docs)
    args.data.mkdir(parents=True, exist_ok=True)
    train_ids = stream(train_docs)
    stdlib_held_ids = stream([texts[rel] for rel in held])
    pkg_held_ids = stream(held_pkg_docs)
    np.save(args.data / "train.npy", train_ids)
    np.save(args.data / "heldout.npy", stdlib_held_ids)  # the first nano's held-out stdlib files
    np.save(args.data / "heldout_packages.npy", pkg_held_ids)
    train_bytes = sum(len(d.encode()) for d in train_docs)
    held_bytes = sum(len(texts[r].encode()) for r in held)
    pkg_held_bytes = sum(len(d.encode()) for d in held_pkg_docs)
    print(f"tokens: train {len(train_ids):,} ({train_bytes / len(train_ids):.2f} bytes/token), "
          f"held-out stdlib {len(stdlib_held_ids):,}, held-out packages {len(pkg_held_ids):,} "
          f"({pkg_held_bytes / len(pkg_held_ids):.2f} bytes/token)")

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    corpus = {
        "sources": ["CPython standard library (*.py), PSF License Agreement",
                    "the *.py files of the wheels in 'packages' (licences listed per package)"],
        "python_version": platform.python_version(),
        "stdlib": "sysconfig.get_paths()['stdlib']",
        "excluded_dirs": EXCLUDED_DIRS,
        "excluded_package_dirs": sorted(EXCLUDED_PACKAGE_DIRS),
        "excluded_files": ["test_*.py, *_test.py, conftest.py (tests)", "_sysconfigdata_*.py (machine-specific)",
                           f".py files over {MAX_FILE_BYTES} bytes (generated tables)",
                           "a file whose exact text was already taken from an earlier package"],
        "heldout_rule": f"stdlib: int(sha1(relative path)[:8], 16) % {HELDOUT_MODULUS} == 0; "
                        "packages: whole packages with split 'heldout'",
        "tokenizer": "trained on the stdlib train files only (the first nano's tokenizer)",
        "train_tokens": len(train_ids), "train_bytes": train_bytes,
        "heldout_stdlib_tokens": len(stdlib_held_ids), "heldout_stdlib_bytes": held_bytes,
        "heldout_packages_tokens": len(pkg_held_ids), "heldout_packages_bytes": pkg_held_bytes,
        "packages": packages,
        "files": [{"path": rel, "split": "heldout" if is_heldout(rel) else "train", "sha256_16": sha(texts[rel])}
                  for rel in files]
                 + [{"path": f"{p['name']}:{rel}", "split": p["split"], "sha256_16": sha(pkg_texts[p['name']][rel])}
                    for p in packages for rel in sorted(pkg_texts[p["name"]])],
    }
    (args.out / "corpus.json").write_text(json.dumps(corpus, indent=0) + "\n")

    # Fixed evaluation sample: EVAL_WINDOWS windows spread evenly over the held-out packages' stream.
    # Each window is scored on its own (no context before it): tokens 1..SEQ_LEN-1 are predicted.
    windows = spread_windows(pkg_held_ids, EVAL_WINDOWS)
    # UTF-8 bytes of the predicted tokens (byte-level BPE: each token is a whole number of bytes).
    decoder_bytes = _token_bytes(tok)
    target_bytes = sum(len(decoder_bytes[t]) for w in windows for t in w[1:])
    heldout = {
        "python_version": platform.python_version(),
        "packages": [f"{p['name']}=={p['version']}" for p in packages if p["split"] == "heldout"],
        "files": held,
        "seq_len": SEQ_LEN,
        "windows": windows,
        "target_tokens": sum(len(w) - 1 for w in windows),
        "target_bytes": target_bytes,
        "note": "windows come from the held-out packages; 'files' are the held-out stdlib files. "
                "Score each window alone; predict w[1:] from w[:-1]; bits/byte = sum NLL / ln 2 / target_bytes",
    }
    (args.out / "heldout.json").write_text(json.dumps(heldout, separators=(",", ":")) + "\n")
    print(f"eval sample: {heldout['target_tokens']} target tokens, {target_bytes} bytes")


def spread_windows(ids: np.ndarray, n: int) -> list[list[int]]:
    """n windows of SEQ_LEN token ids spread evenly over the stream (first at 0, last at the end)."""
    stride = (len(ids) - SEQ_LEN) // (n - 1)
    return [ids[i * stride: i * stride + SEQ_LEN].tolist() for i in range(n)]


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
