"""The bundle contract: every name a bundle's writer and its readers must agree on, and the one manifest builder.

Exporters (export/recipes/) write bundles; the host runtime, `qwen-bench`, the Android app and the iOS app read them.
They meet here and nowhere else: file names, the manifest's format and schema version, the program's method names,
the state buffers' names and their sequence axis. `runtime/CONTRACT.md` states the same contract for the Java, Swift
and C++ readers, and tests/runtime/test_contract.py checks that their constants spell these names the same way.

This module imports nothing heavier than the standard library, so anything may read it (the reader side owns the
contract; the exporter imports it, never the reverse).
"""

from __future__ import annotations

from pathlib import Path

# -- files -------------------------------------------------------------------------------------------------------
MANIFEST = "manifest.json"
PROGRAM = "model.pte"  # xnnpack and coreml-pte bundles
COREML_PACKAGE = "model.mlpackage"  # a coreml bundle in one package; split ones are model_0.mlpackage, model_1...
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = (TOKENIZER, TOKENIZER_CONFIG)  # copied from SOURCE when present
SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"

BUNDLE_FORMAT = "qwen-mobile-bundle"
# 2: the program's T = 1 method is `decode_token`, named `decode` in version 1.
MANIFEST_SCHEMA_VERSION = 2


def coreml_package_names(count: int) -> list[str]:
    """The package files of a Core ML bundle whose layers are split over `count` packages (1: not split)."""
    return [COREML_PACKAGE] if count == 1 else [f"model_{i}.mlpackage" for i in range(count)]


# -- program methods ---------------------------------------------------------------------------------------------
PREFILL_METHOD = "forward"  # tokens [1,T], input_pos [T] -> logits [1,1,vocab]; input_pos[0] == 0 resets the state
# Not "decode": ExecuTorch 1.5's stock LLM runner (create_text_llm_runner) runs every token after the first through a
# method of exactly that name, on a Module whose methods do not share memory arenas, so it would start from a state
# `forward` never wrote. Under any other name the runner drives `forward` (which accepts T = 1) for every step.
DECODE_METHOD = "decode_token"  # tokens [1,1], input_pos [1] -> logits [1,1,vocab]
STATE_READ_METHOD = "state_read"  # () -> every state buffer, in manifest order (copies)
STATE_WRITE_METHOD = "state_write"  # (*buffers) -> [1] zero
TOKEN_METHODS = (PREFILL_METHOD, DECODE_METHOD)  # the methods that run the model (and must contain our op)
# A Core ML package's functions, keyed by the bundle method they implement (manifest program.methods[*].function).
COREML_FUNCTIONS = {PREFILL_METHOD: "prefill", DECODE_METHOD: "decode"}
OP_NAMESPACE = "qwen35"

# -- images (only in bundles exported from a checkpoint with a vision tower; CONTRACT.md, "Images") ---------------
# A prompt with images runs through embeddings: the reader embeds its tokens, writes each image's embeddings over that
# image's placeholder tokens, and prefills with explicit M-RoPE positions (three rows: time, height, width). After an
# image the rotary position runs behind the cache slot, so the one-token method takes both.
EMBED_METHOD = "embed_tokens"  # tokens [1,T] int64 -> embeds [1,T,hidden] float32
EMBEDDINGS_PREFILL_METHOD = "prefill_embeddings"  # embeds [1,T,hidden], input_pos [T], rope_pos [3,T] -> logits
ROPE_DECODE_METHOD = "decode_token_rope"  # tokens [1,1], input_pos [1] (cache slot), rope_pos [1] -> logits
IMAGE_METHOD_PREFIX = "encode_image_"  # encode_image_<H>x<W>: rgb uint8 [H,W,3] -> image embeds [tokens, hidden]
IMAGE_TEXT_METHODS = (EMBED_METHOD, EMBEDDINGS_PREFILL_METHOD, ROPE_DECODE_METHOD)


def image_method(height: int, width: int) -> str:
    """The method that encodes an RGB image of exactly height x width pixels."""
    return f"{IMAGE_METHOD_PREFIX}{height}x{width}"


def is_image_method(name: str) -> bool:
    return name.startswith(IMAGE_METHOD_PREFIX)


# Core ML bundles with images: the text package(s) gain these functions (sharing weights and states with prefill and
# decode), keyed by the bundle method they implement; a prompt's embeddings go through `prefill_embeddings` in full
# chunks and the rest one at a time through the remainder function (nothing is padded into the delta-net state).
# The tower is a package of its own whose functions are named after the image methods (encode_image_<H>x<W>).
COREML_IMAGE_FUNCTIONS = {EMBED_METHOD: "embed", EMBEDDINGS_PREFILL_METHOD: "prefill_embeddings",
                          ROPE_DECODE_METHOD: "decode_rope"}
COREML_EMBEDDINGS_REMAINDER_FUNCTION = "decode_embeddings"
COREML_VISION_PACKAGE = "vision.mlpackage"

# -- state -------------------------------------------------------------------------------------------------------
# A .pte's state buffers are the model's buffers whose names end so ("layers.3.self_attn.k_cache", ...).
STATE_SUFFIXES = ("k_cache", "v_cache", "conv_state", "recurrent_state")
KV_SEQ_AXIS = 2  # KV caches are [B, kv_heads, max_seq_len, head_dim]


def seq_axis(name: str) -> int | None:
    """Axis of a state buffer indexed by token position (a snapshot of n tokens keeps [:n] along it), None if none."""
    return KV_SEQ_AXIS if name.endswith(("k_cache", "v_cache", "kv_cache")) else None


def is_state_buffer(name: str) -> bool:
    return name.endswith(STATE_SUFFIXES)


# -- manifest ----------------------------------------------------------------------------------------------------
def tensor_spec(name: str, shape, dtype: str) -> dict:
    """One method input/output or state buffer as the manifest lists it ("T" in a shape: the dynamic token count)."""
    return {"name": name, "shape": list(shape), "dtype": dtype}


def token_method(kind: str, *, inputs: list[dict], outputs: list[dict], min_tokens: int, max_tokens: int,
                 resets_state_at_position_0: bool, **extra) -> dict:
    """A prefill or decode method's manifest entry (extra: e.g. the Core ML `function` it runs)."""
    if kind not in ("prefill", "decode"):
        raise ValueError(f"method kind {kind!r}: prefill or decode")
    return {**extra, "kind": kind, "inputs": inputs, "outputs": outputs, "min_tokens": min_tokens,
            "max_tokens": max_tokens, "resets_state_at_position_0": resets_state_at_position_0}


def tokenizer_section(bundle_folder: Path, *, bos_id: int | None, stop_ids: list[int],
                      thinking_default: bool | None) -> dict:
    """The manifest's tokenizer: the files the bundle holds (None when SOURCE had none) and the token ids."""
    folder = Path(bundle_folder)
    present = {name: name if (folder / name).is_file() else None for name in TOKENIZER_FILES}
    return {"file": present[TOKENIZER], "config_file": present[TOKENIZER_CONFIG], "bos_id": bos_id,
            "stop_ids": list(stop_ids), "thinking_default": thinking_default}


def _check_coreml_images(methods: dict, images: list[str], vision: dict) -> None:
    """A Core ML bundle's image methods run in its vision package, each as the function of its own name, and the
    three text methods name their functions (what the schema cannot tie together)."""
    package = vision.get("package") or {}
    if not package.get("file"):
        raise ValueError("manifest: a coreml bundle with image methods needs vision.package.file (the tower's package)")
    if sorted(package.get("functions", [])) != images:
        raise ValueError(f"manifest: vision.package.functions lists {sorted(package.get('functions', []))}; the image "
                         f"methods are {images}")
    for name in images:
        if methods[name].get("package") != package["file"] or methods[name].get("function") != name:
            raise ValueError(f"manifest: program.methods.{name} must run function {name!r} of {package['file']!r}")
    for name, function in COREML_IMAGE_FUNCTIONS.items():
        if methods[name].get("function") != function:
            raise ValueError(f"manifest: program.methods.{name}.function is {methods[name].get('function')!r}; "
                             f"a coreml bundle implements it with {function!r}")


MANIFEST_SECTIONS = ("model", "recipe", "program", "state", "tokenizer", "verification", "export")
OPTIONAL_SECTIONS = ("sample_prompt", "vision")  # vision: bundles with image methods only


def build_manifest(*, toolkit_version: str, created_utc: str, model: dict, recipe: dict, program: dict, state: dict,
                   tokenizer: dict, verification: dict, export: dict, **optional) -> dict:
    """The one manifest every exporter writes (schemas/manifest.schema.json; `files` is added by write_manifest).

    Checks what the schema cannot say: both token methods are present and agree with the state on the context.
    optional: sections only some recipes have (e.g. `sample_prompt`).
    """
    methods = program.get("methods", {})
    missing = [m for m in TOKEN_METHODS if m not in methods]
    if missing:
        raise ValueError(f"manifest: program.methods lacks {missing}; every bundle has {list(TOKEN_METHODS)}")
    if methods[DECODE_METHOD]["max_tokens"] != 1:
        raise ValueError(f"manifest: {DECODE_METHOD} takes one token, not {methods[DECODE_METHOD]['max_tokens']}")
    if methods[PREFILL_METHOD]["max_tokens"] > state["max_seq_len"]:
        raise ValueError(f"manifest: {PREFILL_METHOD} takes up to {methods[PREFILL_METHOD]['max_tokens']} tokens, "
                         f"more than the context ({state['max_seq_len']})")
    images = sorted(m for m in methods if is_image_method(m))
    vision = optional.get("vision")
    if images or vision is not None:
        if vision is None:
            raise ValueError(f"manifest: program has image methods {images} but no vision section")
        listed = sorted(image["method"] for image in vision.get("images", []))
        if not images or listed != images:
            raise ValueError(f"manifest: vision.images lists {listed}; the program's image methods are {images}")
        lacking = [m for m in IMAGE_TEXT_METHODS if m not in methods]
        if lacking:
            raise ValueError(f"manifest: a bundle with image methods needs {list(IMAGE_TEXT_METHODS)}; lacks {lacking}")
        if recipe.get("backend") == "coreml":
            _check_coreml_images(methods, images, vision)
    return {"schema_version": MANIFEST_SCHEMA_VERSION, "format": BUNDLE_FORMAT, "toolkit_version": toolkit_version,
            "created_utc": created_utc, "model": model, "recipe": recipe, "program": program, "state": state,
            "tokenizer": tokenizer, "verification": verification, **optional, "export": export}
