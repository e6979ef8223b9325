"""`export_coreml`: a checkpoint to a verified Core ML bundle (stateful multifunction `.mlpackage` + manifest)."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import torch

from qwen_mobile.runtime.errors import UsageError

from ..lowering import DECODE_METHOD
from .convert import ANE_PACKAGE_LIMIT_BYTES, INT4_BLOCK_SIZE, MIN_DEPLOYMENT, QLINEAR
from .graph import GDN_LAYOUTS, fp16_kv, make_decoder, state_shapes

PACKAGE = "model.mlpackage"
DEFAULT_MAX_SEQ_LEN = 1024
DEFAULT_PREFILL_CHUNK = 64
VERIFY_DECODE_STEPS = 16

# Gates of the numpy-evaluated package against eager torch (teacher-forced, verify.compare_with_eager):
# fp32: the same math as the eager model with fp16 attention caches; only op order differs.
FP32_REL_TOL = 1e-4
# fp16 / quantized: measured on nano (README "Parity"); the floors leave room for other prompts.
QUALITY_FLOORS = {
    "fp16": {"min_top1_agreement": 0.9, "max_mean_kl": 0.01},
    "8w": {"min_top1_agreement": 0.9, "max_mean_kl": 0.01},
    "4w": {"min_top1_agreement": 0.75, "max_mean_kl": 0.1},
}


def export_coreml(source: str, out: str | Path, *, qlinear: str = "fp16", max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                  prefill_chunk: int = DEFAULT_PREFILL_CHUNK, gdn_layout: str = "io", gdn_fp32: bool = False,
                  head_fp32: bool = False, max_package_bytes: int = ANE_PACKAGE_LIMIT_BYTES,
                  quality_gate: bool | None = None, force: bool = False, progress: bool = True) -> dict:
    """Export `source` to a Core ML bundle folder at `out` (iOS 18+); returns the validated manifest.

    The bundle holds `model.mlpackage` (or `model_0.mlpackage`, ... when split) with two functions sharing weights
    and states: "prefill" (exactly
    `prefill_chunk` tokens, chunked delta rule) and "decode" (one token). The attention caches of all layers are one
    fp16 Core ML state; the delta-net state is fp32 input/output (`gdn_layout="io"`, the default, see README) or two
    more fp16 states (`"state"`). Before the bundle appears, the saved package is run by the numpy MIL evaluator
    against eager torch and must pass the gate for `qlinear`; nothing is left at `out` on failure.

    source: a local HF folder, the shipped model "nano", or a preset name (random weights).
    qlinear: "fp16" (fp16 weights and compute), "8w" (int8 per channel), "4w" (int4, blocks of 32), or "fp32"
             (fp32 compute; for verification, not for phones).
    gdn_fp32: keep the delta rule and the recurrent state's path in fp32 inside an fp16 program (likely off the
              Neural Engine; measured gain on nano is small, README "State layout").
    head_fp32: keep the vocabulary projection in fp32 inside an fp16 program.
    max_package_bytes: split the layers over several packages chained by the runtime when the estimated size is
              above this (default ~1.4 GB, the reported Neural Engine compile limit); recorded in program.packages.
    quality_gate: enforce top-1/KL floors for fp16/quantized builds; default on for checkpoints, off for presets.
    """
    import coremltools  # noqa: F401  (the [coreml] extra; fail before any work)

    from qwen_mobile.export.api import _stop_ids, check_context, load_model, manifest_identity, open_source
    from qwen_mobile.export.verify import VerificationError, compare_with_eager, gate
    from qwen_mobile.runtime import bundle

    from .convert import build_package
    from .evaluator import MILModel
    from .runner import CoreMLRunner, evaluator_call

    if qlinear not in QLINEAR:
        raise UsageError(f"--qlinear {qlinear!r}: not valid for recipe coreml; valid: {list(QLINEAR)}")
    if gdn_layout not in GDN_LAYOUTS:
        raise UsageError(f"--gdn-layout {gdn_layout!r}: valid: {list(GDN_LAYOUTS)}")
    if prefill_chunk < 2:
        raise UsageError(f"--prefill-chunk {prefill_chunk}: must be at least 2 (single tokens go through decode)")
    if prefill_chunk > max_seq_len:
        raise UsageError(f"--prefill-chunk {prefill_chunk} exceeds --max-seq-len {max_seq_len}")
    if head_fp32 and qlinear == "fp32":
        raise UsageError("--head-fp32 only applies to fp16 programs; --qlinear fp32 is fp32 throughout")
    if max_package_bytes < 1:
        raise UsageError(f"--max-package-bytes {max_package_bytes}: must be positive")
    if gdn_fp32 and qlinear == "fp32":
        raise UsageError("--gdn-fp32 only applies to fp16 programs; --qlinear fp32 is fp32 throughout")
    out = Path(out)
    opened = open_source(source, out, force=force, quality_gate=quality_gate)
    source_dir, config, tokenizer, random_weights, quality_gate = (
        opened.source_dir, opened.config, opened.tokenizer, opened.random_weights, opened.quality_gate)
    check_context(max_seq_len, config)

    say = (lambda msg: print(f"[coreml] {msg}", flush=True)) if progress else (lambda msg: None)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_model(source, max_seq_len=max_seq_len, gdn_impl="reference")
    n_params = sum(p.numel() for p in model.parameters())
    parts = plan_packages(model, qlinear, max_package_bytes)
    names = [PACKAGE] if len(parts) == 1 else [f"model_{i}.mlpackage" for i in range(len(parts))]
    if len(parts) > 1:
        say(f"{len(parts)} packages of layers {parts} (each estimated under {max_package_bytes / 1e9:.2f} GB)")
    timings["load"] = time.perf_counter() - t0

    with bundle.staged_bundle(out, force, opened.source_dir) as staging:
        t0 = time.perf_counter()
        reports = []
        for name, layers in zip(names, parts):
            if len(parts) > 1:
                say(f"package {name}: layers [{layers[0]}, {layers[1]})")
            reports.append(build_package(make_decoder(model, gdn_layout, layers), staging / name,
                                         prefill_chunk=prefill_chunk, qlinear=qlinear, keep_gdn_fp32=gdn_fp32,
                                         keep_head_fp32=head_fp32, progress=say))
        timings["convert"] = time.perf_counter() - t0
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if source_dir and (source_dir / name).is_file():
                shutil.copy(source_dir / name, staging / name)

        say("verify with the numpy MIL evaluator")
        t0 = time.perf_counter()
        mils = [MILModel(staging / name) for name in names]
        chain = []
        for mil, layers in zip(mils, parts):
            check_package_spec(mil, config, max_seq_len, prefill_chunk, gdn_layout, layers=layers)
            shapes = state_shapes(config, max_seq_len, layers)
            has_io = gdn_layout == "io" and shapes["gdn_rec"][0] > 0
            chain.append((evaluator_call(mil), {n: shapes[n] for n in ("gdn_conv", "gdn_rec")} if has_io else {}))
        runner = CoreMLRunner(prefill_chunk=prefill_chunk, parts=chain)
        # fp32 is held to the model it implements exactly (fp16 caches); fp16 and quantized builds to the fp32 model.
        reference = fp16_kv(model) if qlinear == "fp32" else model
        prompt = verification_prompt(config.vocab_size, tokenizer, prefill_chunk)
        steps = min(VERIFY_DECODE_STEPS, max_seq_len - len(prompt))
        metrics = compare_with_eager(runner, reference, prompt, steps=steps)
        if qlinear == "fp32":
            result = gate(metrics, "fp32", "none", {"max_abs_logit_diff": FP32_REL_TOL}, quality_gate)
        else:
            result = gate(metrics, qlinear, "none", QUALITY_FLOORS[qlinear], quality_gate)
        timings["verify"] = time.perf_counter() - t0
        if not result.passed:
            raise VerificationError("Core ML", result, qlinear == "fp32")

        stop_ids = _stop_ids(config, tokenizer)
        vocab = config.vocab_size
        tensor = lambda n, shape, dtype: {"name": n, "shape": list(shape), "dtype": dtype}  # noqa: E731

        def package_io(layers, tokens):
            """Inputs and outputs of one package's function of `tokens` tokens."""
            shapes = state_shapes(config, max_seq_len, layers)
            first, last = layers[0] == 0, layers[1] == config.num_hidden_layers
            inputs = [tensor("tokens", [1, tokens], "int32") if first
                      else tensor("hidden", [1, tokens, config.hidden_size], "float32"),
                      tensor("input_pos", [tokens], "int32")]
            outputs = [tensor("logits", [1, 1, vocab], "float32") if last
                       else tensor("hidden_out", [1, tokens, config.hidden_size], "float32")]
            if gdn_layout == "io" and shapes["gdn_rec"][0]:
                inputs += [tensor("conv_in", shapes["gdn_conv"], "float32"),
                           tensor("rec_in", shapes["gdn_rec"], "float32")]
                outputs += [tensor("conv_out", shapes["gdn_conv"], "float32"),
                            tensor("rec_out", shapes["gdn_rec"], "float32")]
            return inputs, outputs

        def method(function, tokens):
            # Single package: its own I/O. Split: the chain's ends (per-package I/O in program.packages).
            if len(parts) == 1:
                inputs, outputs = package_io(parts[0], tokens)
            else:
                inputs = [tensor("tokens", [1, tokens], "int32"), tensor("input_pos", [tokens], "int32")]
                outputs = [tensor("logits", [1, 1, vocab], "float32")]
            return {"function": function, "kind": "prefill" if tokens > 1 else "decode", "inputs": inputs,
                    "outputs": outputs, "min_tokens": tokens, "max_tokens": tokens,
                    "resets_state_at_position_0": True}

        buffers, packages = [], []
        for name, layers, report in zip(names, parts, reports):
            shapes = state_shapes(config, max_seq_len, layers)
            if shapes["kv_cache"][0]:
                buffers.append(dict(tensor("kv_cache", shapes["kv_cache"], "float16"), seq_axis=2,
                                    storage="coreml_state", package=name))
            if shapes["gdn_rec"][0]:
                for buf in ("gdn_conv", "gdn_rec"):
                    buffers.append(dict(tensor(buf, shapes[buf], "float16" if gdn_layout == "state" else "float32"),
                                        seq_axis=None, package=name,
                                        storage="coreml_state" if gdn_layout == "state" else "host_io"))
            entry = {"file": name, "layers": list(layers), "bytes": report.package_bytes}
            if len(parts) > 1:
                for function, tokens in (("prefill", prefill_chunk), ("decode", 1)):
                    entry[function] = dict(zip(("inputs", "outputs"), package_io(layers, tokens)))
            packages.append(entry)
        package_bytes = sum(r.package_bytes for r in reports)
        conversion = dict(reports[0].__dict__) if len(reports) == 1 else {
            "package_bytes": package_bytes, "weight_bytes": sum(r.weight_bytes for r in reports),
            "functions": reports[0].functions, "quantize_seconds": sum(r.quantize_seconds for r in reports),
            "merge_seconds": sum(r.merge_seconds for r in reports), "packages": [r.__dict__ for r in reports]}
        manifest = {
            **manifest_identity(source, config, n_params, random_weights),
            "recipe": {"name": "coreml", "backend": "coreml", "preset": None, "qlinear": qlinear,
                       # linear_quantize_weights quantizes the embedding table with the linears.
                       "qembedding": qlinear if qlinear in ("8w", "4w") else "none",
                       # coremltools' const deduplication stores a tied table once per package (nano fp32: 38.8 MB of
                       # weights for 9.7 M parameters); a split model has it in its first and last packages.
                       "group_size": INT4_BLOCK_SIZE,
                       "tied_table_copies": 2 if len(parts) > 1 and config.tie_word_embeddings else 1,
                       "gdn_layout": gdn_layout, "gdn_fp32": gdn_fp32, "head_fp32": head_fp32,
                       "compute_precision": "fp32" if qlinear == "fp32" else "fp16",
                       "minimum_deployment_target": MIN_DEPLOYMENT},
            "program": {
                "file": names[0], "op_namespace": "qwen35", "kernel_namespaces": [],
                # Keyed like every bundle's methods (the .pte method names); `function` is the Core ML function.
                "methods": {"forward": method("prefill", prefill_chunk), DECODE_METHOD: method("decode", 1)},
                "packages": packages,
                "chain": ("one package" if len(parts) == 1 else
                          "run the packages in order: the first takes tokens, each next one the previous hidden_out, "
                          "the last returns logits; every package has its own states"),
                "graph": {name: {f: {"ops": mil.op_histogram(f)} for f in ("prefill", "decode")}
                          for name, mil in zip(names, mils)} if len(parts) > 1 else
                         {f: {"ops": mils[0].op_histogram(f)} for f in ("prefill", "decode")},
                "prefill_rule": f"full {prefill_chunk}-token chunks through prefill, the rest through decode",
            },
            "state": {"max_seq_len": max_seq_len, "max_batch_size": 1, "shared_between_methods": True,
                      "reset": "a call whose input_pos[0] == 0 zeroes every state first (in-graph)",
                      "buffers": buffers},
            "tokenizer": {"file": "tokenizer.json" if (staging / "tokenizer.json").is_file() else None,
                          "config_file": ("tokenizer_config.json" if (staging / "tokenizer_config.json").is_file()
                                          else None),
                          "bos_id": config.bos_token_id, "stop_ids": stop_ids, "thinking_default": None},
            "verification": dict(result.as_dict(), quality_gate=quality_gate, prompt_tokens=len(prompt),
                                 evaluator="numpy MIL evaluator (Linux); MLModel.predict not run",
                                 reference="eager fp32 with fp16 attention caches" if qlinear == "fp32"
                                 else "eager fp32"),
            "export": {"seconds": round(time.perf_counter() - t_all, 1),
                       "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
                       "conversion": conversion, "max_package_bytes": max_package_bytes},
        }
        for name, report in zip(names, reports):
            if report.package_bytes > ANE_PACKAGE_LIMIT_BYTES:
                warnings.warn(f"{name} is {report.package_bytes / 1e9:.2f} GB, above the ~1.4 GB Neural Engine "
                              "compile limit: it will run on GPU/CPU (lower --max-package-bytes)")
        manifest = bundle.write_manifest(staging, manifest)
    return manifest


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


def verification_prompt(vocab_size: int, tokenizer, prefill_chunk: int) -> list[int]:
    """A prompt long enough for one full prefill chunk plus a decoded tail, split by compare_with_eager in thirds."""
    from qwen_mobile.export.verify import fixed_prompt

    length = 3 * prefill_chunk + 5
    prompt = fixed_prompt(vocab_size, tokenizer, length=length)
    if len(prompt) < length:  # the tokenizer's text is short: pad with deterministic random ids
        gen = torch.Generator().manual_seed(4321)
        prompt += torch.randint(0, vocab_size, (length - len(prompt),), generator=gen).tolist()
    return prompt


def check_package_spec(mil, config, max_seq_len: int, prefill_chunk: int, gdn_layout: str,
                       positional_outputs: bool = False, layers: tuple[int, int] | None = None) -> None:
    """Assert what the apps rely on: function names, input/output names and shapes, states (names, fp16, shapes).

    layers: the package's layer range in a split model (default: all). positional_outputs: outputs are checked by
    position only (ExecuTorch's delegate names them after graph nodes and hands them back by position).
    """
    layers = (0, config.num_hidden_layers) if layers is None else tuple(layers)
    first, last = layers[0] == 0, layers[1] == config.num_hidden_layers
    shapes = state_shapes(config, max_seq_len, layers)
    has_attn, has_gdn = shapes["kv_cache"][0] > 0, shapes["gdn_rec"][0] > 0
    if sorted(mil.functions) != ["decode", "prefill"]:
        raise RuntimeError(f"package functions {sorted(mil.functions)}; expected ['decode', 'prefill']")
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
