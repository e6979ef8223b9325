"""Hugging Face checkpoint -> Qwen35ForCausalLM: one flat key map, a short ignore list, loud errors.

Reads `config.json` and `model.safetensors` or shards listed in `model.safetensors.index.json`. Tensors are read one
at a time from memory-mapped safetensors and assigned straight into a model built on the meta device, so peak memory
is the final model plus one tensor. Pickle checkpoints (`*.bin`, `*.pt`) are never loaded.

The vision tower (`model.visual.*`) is a model of its own: `load_pretrained` skips its keys and
`load_vision_pretrained` reads them, and nothing else, by the same rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import Qwen35Config, Qwen35VisionConfig

# Real Qwen3.5 releases are Qwen3_5ForConditionalGeneration: text keys sit under `model.language_model.`.
TEXT_PREFIXES = ("model.language_model.", "model.")

# Keys we skip on purpose, with the reason. Anything else that does not map is an error.
IGNORED = (
    (re.compile(r"^model\.visual\."), "vision tower: loaded on its own by load_vision_pretrained"),
    (re.compile(r"^mtp\."), "multi-token-prediction head: only used for self-speculative decoding"),
    (re.compile(r"rotary_emb\.inv_freq$"), "RoPE tables are recomputed from the config"),
)

# Small parameters kept in fp32 whatever the requested dtype: the gate math runs in fp32 (exp(A_log) overflows fp16).
FP32_PARAMS = re.compile(r"\.(A_log|dt_bias)$")


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be loaded as the model its config describes."""


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Map every tensor key to the safetensors file that holds it."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
        files = {key: path / name for key, name in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise CheckpointError(f"{index} lists shard {f.name}, which is missing")
        return files
    if single.is_file():
        with _open(single) as f:
            return {key: single for key in f.keys()}
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        raise CheckpointError(f"{path}: found {[s.name for s in shards]} but no model.safetensors.index.json")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles:
        raise CheckpointError(f"{path}: only pickle checkpoints {pickles}; pickles are never loaded, "
                              "convert them to safetensors first")
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: cannot be read as safetensors (truncated or corrupt?): {err}") from None


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


class TensorReader:
    """Reads one tensor at a time into anonymous memory with plain file reads.

    safetensors' get_tensor returns views of a private mapping of the whole file; every page touched stays in this
    process's RSS until the mapping goes, so loading a 4B checkpoint as stored (8.4 GB) would count its bytes twice.
    A read() copies from the page cache, which is not ours. `safe_open` has already checked the header and the file's
    length; this reads the byte ranges its header names."""

    def __init__(self, file: Path):
        self.file = file
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            self.header = json.loads(f.read(n))
        self.data_start = 8 + n

    def read(self, key: str) -> torch.Tensor:
        entry = self.header[key]
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.file.name}: tensor '{key}' has dtype {entry['dtype']}, which we do not load")
        start, end = entry["data_offsets"]
        tensor = torch.empty(entry["shape"], dtype=dtype)
        raw = tensor.reshape(-1).view(torch.uint8).numpy()  # the tensor's own bytes, written in place
        if raw.nbytes != end - start:
            raise CheckpointError(f"{self.file.name}: tensor '{key}' spans {end - start} bytes, its shape "
                                  f"{entry['shape']} and dtype {entry['dtype']} need {raw.nbytes}")
        with open(self.file, "rb") as f:
            f.seek(self.data_start + start)
            got = f.readinto(memoryview(raw))
        if got != end - start:
            raise CheckpointError(f"{self.file}: tensor '{key}' is cut short (truncated file?)")
        return tensor


def read_tensor(reader: TensorReader, key: str, file: Path) -> torch.Tensor:
    """reader.read(key), any failure named as an unreadable tensor of `file`."""
    try:
        return reader.read(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: tensor '{key}' cannot be read (truncated or corrupt?): {err}") from None


def map_key(key: str) -> str | None:
    """Checkpoint key -> our parameter name, or None if the key is on the ignore list."""
    for pattern, _reason in IGNORED:
        if pattern.search(key):
            return None
    if key == "lm_head.weight":
        return key
    for prefix in TEXT_PREFIXES:
        if key.startswith(prefix):
            return "model." + key[len(prefix):]
    return key  # unknown: the caller reports it


def load_pretrained(cls, path, *, dtype=torch.float32, max_seq_len=None, max_batch_size=1, gdn_impl="op",
                    keep_bf16=False):
    """keep_bf16: tensors stored in bfloat16 stay bfloat16 (the rest load in `dtype`, caches use `dtype`). For the
    exporter: bf16 -> fp32 is exact, so `fp32_compute` (export/transforms/) runs this model as the fp32 model of the same
    values at half the memory, and quantization upcasts one weight at a time (a 4B model is 16.8 GB in fp32)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    config = Qwen35Config.from_json(path)
    files = checkpoint_files(path)

    from .qwen35 import default_max_seq_len

    max_seq_len = default_max_seq_len(config) if max_seq_len is None else max_seq_len
    if max_seq_len > config.max_position_embeddings:
        raise ValueError(f"max_seq_len={max_seq_len} exceeds max_position_embeddings="
                         f"{config.max_position_embeddings} in {path / 'config.json'}")
    with torch.device("meta"):  # parameters cost nothing until the checkpoint's tensors are assigned
        model = cls(config, max_seq_len=1, max_batch_size=max_batch_size, gdn_impl=gdn_impl)
    expected = dict(model.named_parameters())  # a tied table appears once, as model.embed_tokens.weight
    loaded: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key, file in files.items():
        by_file.setdefault(file, []).append(key)

    for file, keys in sorted(by_file.items()):
        with _open(file) as f:
            reader = TensorReader(file)
            for key in sorted(keys):
                name = map_key(key)
                if name is None:
                    continue
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied: the embedding is the output matrix
                if name.endswith("linear_attn.conv1d.bias"):
                    _require_zero_bias(f, key, file)
                    continue
                if name not in expected:
                    raise CheckpointError(f"{file.name}: unexpected tensor '{key}' (maps to '{name}', which this "
                                          "model does not have); the config and the checkpoint disagree")
                tensor = read_tensor(reader, key, file)
                want = tuple(expected[name].shape)
                if tuple(tensor.shape) != want:
                    raise CheckpointError(f"{file.name}: tensor '{key}' has shape {tuple(tensor.shape)}, expected "
                                          f"{want} from {path / 'config.json'}")
                if FP32_PARAMS.search(name):
                    target = torch.float32
                elif keep_bf16 and tensor.dtype == torch.bfloat16:
                    target = torch.bfloat16
                else:
                    target = dtype
                loaded[name] = tensor.to(target)

    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(f"{path}: tensor '{_hf_name(missing[0], files)}' is missing from the checkpoint"
                              + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    model.load_state_dict(loaded, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.setup_caches(max_batch_size, max_seq_len, dtype)
    return model.eval().requires_grad_(False)


def _require_zero_bias(f, key: str, file: Path) -> None:
    # Qwen3.5's conv has no bias; a zero one (some converters write it) is harmless, anything else is not ours.
    if f.get_tensor(key).abs().max() != 0:
        raise CheckpointError(f"{file.name}: tensor '{key}' is a non-zero conv bias, which Qwen3.5 does not have")


def _hf_name(name: str, files: dict[str, Path]) -> str:
    """Our name -> the key a checkpoint of this layout would use (for error messages)."""
    if any(k.startswith("model.language_model.") for k in files) and name.startswith("model."):
        return "model.language_model." + name[len("model."):]
    return name


# Vision tower: `model.visual.<name>` -> `<name>`. The one layout change is the patch embedding, a conv whose kernel
# equals its stride, stored by us as the equivalent Linear (vision.py).
VISION_PREFIX = "model.visual."
PATCH_EMBED_WEIGHT = "patch_embed.proj.weight"


def map_vision_key(key: str) -> str | None:
    """Checkpoint key -> the tower's parameter name, or None for a key outside the tower."""
    return key[len(VISION_PREFIX):] if key.startswith(VISION_PREFIX) else None


def load_vision_pretrained(cls, path, *, dtype=torch.float32):
    """The vision tower of a local HF folder. Keys outside `model.visual.` are the text loader's business; inside it,
    a key the tower does not have, a missing tensor or a wrong shape is an error naming the key and the file."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    config = Qwen35VisionConfig.from_json(path)
    if config is None:
        raise CheckpointError(f"{path / 'config.json'} has no vision_config: this checkpoint has no vision tower "
                              "(a text-only save)")
    files = checkpoint_files(path)
    with torch.device("meta"):
        model = cls(config)
    expected = dict(model.named_parameters())
    conv_shape = (config.hidden_size, config.in_channels, config.temporal_patch_size, config.patch_size,
                  config.patch_size)
    loaded: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key, file in files.items():
        if map_vision_key(key) is not None:
            by_file.setdefault(file, []).append(key)

    for file, keys in sorted(by_file.items()):
        with _open(file):  # checks the header before TensorReader trusts it
            reader = TensorReader(file)
            for key in sorted(keys):
                name = map_vision_key(key)
                if name not in expected:
                    raise CheckpointError(f"{file.name}: unexpected tensor '{key}' (maps to '{name}', which the "
                                          "vision tower does not have); the config and the checkpoint disagree")
                tensor = read_tensor(reader, key, file)
                want = conv_shape if name == PATCH_EMBED_WEIGHT else tuple(expected[name].shape)
                if tuple(tensor.shape) != want:
                    raise CheckpointError(f"{file.name}: tensor '{key}' has shape {tuple(tensor.shape)}, expected "
                                          f"{want} from {path / 'config.json'}")
                if name == PATCH_EMBED_WEIGHT:
                    tensor = tensor.reshape(config.hidden_size, config.patch_dim)  # [D,C,tp,p,p] -> [D, C*tp*p*p]
                loaded[name] = tensor.to(dtype)

    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(f"{path}: tensor '{VISION_PREFIX}{missing[0]}' is missing from the checkpoint"
                              + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    model.load_state_dict(loaded, strict=True, assign=True)
    return model.eval().requires_grad_(False)
