"""Core ML bundles' settings and checks, shared by the `coreml` and `coreml-pte` recipes (export/recipes/): defaults,
quality floors, the split of the layers into packages, the verification prompt, and the package spec the apps rely on.
"""

from __future__ import annotations

import torch

from qwen_mobile.runtime.contract import COREML_PACKAGE as PACKAGE  # noqa: F401  (mac_verify reads it here)

from .convert import INT4_BLOCK_SIZE
from .graph import state_shapes

DEFAULT_MAX_SEQ_LEN = 1024
DEFAULT_PREFILL_CHUNK = 64
VERIFY_DECODE_STEPS = 16

# Gates of the numpy-evaluated package against eager torch (teacher-forced, verify.compare_with_eager):
# fp32: the same math as the eager model with fp16 attention caches; only op order differs.
FP32_REL_TOL = 1e-4
# fp16 / quantized: set on the first nano with room for other prompts. On the shipped nano (issue 23: the 17.8M-token
# run plus its loop-branch fine-tune; README "Measured on this machine"), with the all-code prompt below: fp16 top-1
# 1.000, KL 4.4e-6; 8w 1.000, 2.5e-4 (KL 40x under its floor); 4w 1.000, 1.3e-2 (8x under), like XNNPACK's own int4
# gate (KL 1.8e-2). The pre-trained weights measured 5.5e-6, 1.5e-4 and 0.941 / 1.4e-2: the floors hold either way.
QUALITY_FLOORS = {
    "fp16": {"min_top1_agreement": 0.9, "max_mean_kl": 0.01},
    "8w": {"min_top1_agreement": 0.9, "max_mean_kl": 0.01},
    "4w": {"min_top1_agreement": 0.75, "max_mean_kl": 0.1},
}


# Stored bytes per weight by --qlinear: int4 carries an fp16 scale per block of 32.
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "8w": 1.0, "4w": 0.5 + 2.0 / INT4_BLOCK_SIZE}


def plan_packages(model, qlinear: str, max_package_bytes: int) -> list[tuple[int, int]]:
    """Split the layers into consecutive ranges whose estimated package size stays under max_package_bytes.

    The first package also holds the embedding table, the last the final norm and the head (the tied table again when
    they are different packages). A single layer larger than the limit gets a package of its own.
    """
    per = BYTES_PER_WEIGHT[qlinear]
    layers = [sum(p.numel() for p in layer.parameters()) * per for layer in model.model.layers]
    table = model.model.embed_tokens.weight.numel() * per
    head = model.lm_head.weight.numel() * per + model.model.norm.weight.numel() * per
    if table + sum(layers) + (0 if model.config.tie_word_embeddings else head) <= max_package_bytes:
        return [(0, len(layers))]
    parts, start, size = [], 0, table
    for i, layer_bytes in enumerate(layers):
        last_extra = head if i == len(layers) - 1 else 0.0
        if i > start and size + layer_bytes + last_extra > max_package_bytes:
            parts.append((start, i))
            start, size = i, 0.0
        size += layer_bytes
    parts.append((start, len(layers)))
    return parts


# Ordinary code written for the gate, after verify.fixed_prompt's text. The prompt must fill whole prefill chunks, and
# padding the short fixed text with random ids (as this gate first did) made 83 % of nano's prompt noise: a trained
# model is unsure what follows noise, its top-2 logits near-tie, and top-1 agreement then measured the ties (XNNPACK's
# own 8w scored 0.882 there, like Core ML's), not the program.
VERIFICATION_TEXT = '''

def fibonacci_table(count):
    """Return the first count Fibonacci numbers as a list."""
    table = [0, 1]
    while len(table) < count:
        table.append(table[-1] + table[-2])
    return table[:count]


class LRUCache:
    """A small least-recently-used cache with a fixed capacity."""

    def __init__(self, capacity=128):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._data = {}

    def get(self, key, default=None):
        if key not in self._data:
            return default
        value = self._data.pop(key)
        self._data[key] = value
        return value

    def put(self, key, value):
        self._data.pop(key, None)
        self._data[key] = value
        if len(self._data) > self.capacity:
            oldest = next(iter(self._data))
            del self._data[oldest]

    def __len__(self):
        return len(self._data)


def read_lines(path, encoding="utf-8"):
    """Yield the stripped, non-empty lines of a text file."""
    with open(path, encoding=encoding) as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line
'''


def verification_prompt(vocab_size: int, tokenizer, prefill_chunk: int) -> list[int]:
    """A prompt long enough for one full prefill chunk plus a decoded tail, split by compare_with_eager in thirds."""
    from qwen_mobile.export.verify import fixed_prompt

    length = 3 * prefill_chunk + 5
    prompt = fixed_prompt(vocab_size, tokenizer, length=length)
    if tokenizer is not None and len(prompt) < length:
        prompt += tokenizer.encode(VERIFICATION_TEXT, add_special_tokens=False).ids[: length - len(prompt)]
    if len(prompt) < length:  # no tokenizer, or a tokenizer whose text is still short: deterministic random ids
        gen = torch.Generator().manual_seed(4321)
        prompt += torch.randint(0, vocab_size, (length - len(prompt),), generator=gen).tolist()
    return prompt


def check_package_spec(mil, config, max_seq_len: int, prefill_chunk: int, gdn_layout: str,
                       positional_outputs: bool = False, layers: tuple[int, int] | None = None,
                       image_functions: bool = False) -> None:
    """Assert what the apps rely on: function names, input/output names and shapes, states (names, fp16, shapes).

    layers: the package's layer range in a split model (default: all). positional_outputs: outputs are checked by
    position only (ExecuTorch's delegate names them after graph nodes and hands them back by position).
    image_functions: the package also holds the functions that take embeddings (graph.image_functions).
    """
    layers = (0, config.num_hidden_layers) if layers is None else tuple(layers)
    first, last = layers[0] == 0, layers[1] == config.num_hidden_layers
    shapes = state_shapes(config, max_seq_len, layers)
    has_attn, has_gdn = shapes["kv_cache"][0] > 0, shapes["gdn_rec"][0] > 0
    want_functions = ["decode", "prefill"]
    if image_functions:
        want_functions = sorted(want_functions + _image_function_names(first))
    if sorted(mil.functions) != want_functions:
        raise RuntimeError(f"package functions {sorted(mil.functions)}; expected {want_functions}")
    want_states = {"kv_cache": shapes["kv_cache"]} if has_attn else {}
    if gdn_layout == "state" and has_gdn:
        want_states.update(gdn_conv=shapes["gdn_conv"], gdn_rec=shapes["gdn_rec"])
    got_states = {n: s for n, (s, _) in mil.state_specs().items()}
    if got_states != want_states or any(dt.__name__ != "float16" for _, dt in mil.state_specs().values()):
        raise RuntimeError(f"package states {mil.state_specs()}; expected fp16 {want_states}")
    from coremltools.converters.mil.mil import types

    for name, tokens in (("prefill", prefill_chunk), ("decode", 1)):
        fn = mil.functions[name]
        inputs = {n: tuple(v.shape) for n, v in fn.inputs.items() if not types.is_state(v.sym_type)}
        want = {"tokens": (1, tokens)} if first else {"hidden": (1, tokens, config.hidden_size)}
        want["input_pos"] = (tokens,)
        want_out = {"logits": (1, 1, config.vocab_size)} if last else {"hidden_out": (1, tokens, config.hidden_size)}
        if gdn_layout == "io" and has_gdn:
            want.update(conv_in=shapes["gdn_conv"], rec_in=shapes["gdn_rec"])
            want_out.update(conv_out=shapes["gdn_conv"], rec_out=shapes["gdn_rec"])
        names = list(want_out) if positional_outputs else [v.name for v in fn.outputs]
        if len(names) != len(fn.outputs):
            raise RuntimeError(f"function {name}: {len(fn.outputs)} outputs, expected {list(want_out)}")
        outputs = {n: tuple(v.shape) for n, v in zip(names, fn.outputs)}
        if inputs != want or outputs != want_out:
            raise RuntimeError(f"function {name}: inputs {inputs}, outputs {outputs}; expected {want}, {want_out}")
    if image_functions:
        _check_image_functions(mil, config, shapes, prefill_chunk, gdn_layout, first, last, has_gdn)


def _image_function_names(first: bool) -> list[str]:
    from qwen_mobile.runtime import contract

    names = [contract.COREML_IMAGE_FUNCTIONS[contract.EMBEDDINGS_PREFILL_METHOD],
             contract.COREML_EMBEDDINGS_REMAINDER_FUNCTION]
    if first:
        names += [contract.COREML_IMAGE_FUNCTIONS[m] for m in (contract.EMBED_METHOD, contract.ROPE_DECODE_METHOD)]
    return names


def _check_image_functions(mil, config, shapes, prefill_chunk, gdn_layout, first, last, has_gdn) -> None:
    """The functions that take embeddings: names, inputs and outputs as runtime/CONTRACT.md's Core ML notes say."""
    from coremltools.converters.mil.mil import types

    from qwen_mobile.runtime import contract

    h = config.hidden_size
    names = contract.COREML_IMAGE_FUNCTIONS
    io_in = dict(conv_in=shapes["gdn_conv"], rec_in=shapes["gdn_rec"]) if gdn_layout == "io" and has_gdn else {}
    io_out = dict(conv_out=shapes["gdn_conv"], rec_out=shapes["gdn_rec"]) if io_in else {}
    head = "embeds" if first else "hidden"
    out = {"logits": (1, 1, config.vocab_size)} if last else None
    want = {
        names[contract.EMBEDDINGS_PREFILL_METHOD]: (
            {head: (1, prefill_chunk, h), "input_pos": (prefill_chunk,), "rope_pos": (3, prefill_chunk), **io_in},
            {**(out or {"hidden_out": (1, prefill_chunk, h)}), **io_out}),
        contract.COREML_EMBEDDINGS_REMAINDER_FUNCTION: (
            {head: (1, 1, h), "input_pos": (1,), "rope_pos": (3, 1), **io_in},
            {**(out or {"hidden_out": (1, 1, h)}), **io_out}),
    }
    if first:
        want[names[contract.EMBED_METHOD]] = ({"tokens": (1, prefill_chunk)}, {"embeds": (1, prefill_chunk, h)})
        want[names[contract.ROPE_DECODE_METHOD]] = ({"tokens": (1, 1), "input_pos": (1,), "rope_pos": (1,), **io_in},
                                                    {**(out or {"hidden_out": (1, 1, h)}), **io_out})
    for name, (want_in, want_out) in want.items():
        fn = mil.functions[name]
        inputs = {n: tuple(v.shape) for n, v in fn.inputs.items() if not types.is_state(v.sym_type)}
        outputs = {v.name: tuple(v.shape) for v in fn.outputs}
        if inputs != want_in or outputs != want_out:
            raise RuntimeError(f"function {name}: inputs {inputs}, outputs {outputs}; expected {want_in}, {want_out}")


def check_vision_spec(mil, sizes, vision_config, hidden: int) -> None:
    """The vision package: one function per size, encode_image_<H>x<W>(rgb [H,W,3] fp32) -> image_embeds [N,hidden]
    fp32, no states."""
    from qwen_mobile.runtime.contract import image_method

    factor = vision_config.patch_size * vision_config.spatial_merge_size
    want = {image_method(h, w): ({"rgb": (h, w, 3)}, {"image_embeds": (h * w // factor ** 2, hidden)})
            for h, w in sizes}
    if sorted(mil.functions) != sorted(want) or mil.state_specs():
        raise RuntimeError(f"vision package functions {sorted(mil.functions)}, states {mil.state_specs()}; expected "
                           f"{sorted(want)} and no state")
    for name, (want_in, want_out) in want.items():
        fn = mil.functions[name]
        inputs = {n: tuple(v.shape) for n, v in fn.inputs.items()}
        outputs = {v.name: tuple(v.shape) for v in fn.outputs}
        if inputs != want_in or outputs != want_out:
            raise RuntimeError(f"vision function {name}: inputs {inputs}, outputs {outputs}; expected {want_in}, "
                               f"{want_out}")
