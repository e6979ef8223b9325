"""`--recipe coreml-pte`: an ExecuTorch `.pte` whose every method is one Core ML delegate call.

The same `CoreMLDecoder` graphs as the `.mlpackage` recipe (methods `forward`: prefill of `prefill_chunk` tokens,
`decode_token`: one token; fp16 KV state taken over by the delegate; delta-net state as fp32 inputs/outputs) go through
`to_edge_transform_and_lower` with ExecuTorch's `CoreMLPartitioner` (`lower_full_graph=True`); the delta rule goes in
through our MIL translation. ExecuTorch 1.5.1 combines the methods' Core ML models into one multifunction model
stored once in the program's named data. The export fails if any node but the delegate calls (and their getitems)
is left outside. Verification reads that Core ML model back out of the written `.pte` and runs it with the numpy
evaluator. On Linux the `.pte` cannot run (`Backend CoreMLBackend is not registered`); whether ExecuTorch's Core ML
runtime shares the KV state between the two methods on a device is not verified here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from qwen_mobile.runtime.errors import UsageError

from ..lowering import DECODE_METHOD
from .api import FP32_REL_TOL, QUALITY_FLOORS, VERIFY_DECODE_STEPS, check_package_spec, verification_prompt
from .convert import INT4_BLOCK_SIZE, MIN_DEPLOYMENT, QLINEAR
from .graph import CoreMLDecoder, check_gdn_nodes, example_inputs, fp16_kv, state_shapes

PROGRAM = "model.pte"
ALLOWED_OUTSIDE = ("executorch_call_delegate", "getitem")


def lower_to_pte(decoder: CoreMLDecoder, *, prefill_chunk: int, qlinear: str, say=lambda m: None):
    """-> (ExecutorchProgramManager, delegation summary per method). Raises if anything stays outside Core ML."""
    import coremltools as ct
    import torch
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    from .mil_gdn import functionalize_gated_delta, register

    register()
    if decoder.gdn_layout != "io":
        raise ValueError("coreml-pte keeps the delta-net state as fp32 inputs/outputs (gdn_layout='io')")
    programs = {}
    for method, tokens in (("forward", prefill_chunk), (DECODE_METHOD, 1)):
        decoder.kv_cache.zero_()
        with torch.no_grad():
            ep = torch.export.export(decoder, example_inputs(decoder, tokens), strict=False)
        functionalize_gated_delta(ep)
        check_gdn_nodes(ep, len(decoder.gdn_index))
        programs[method] = ep
    precision = ct.precision.FLOAT32 if qlinear == "fp32" else ct.precision.FLOAT16
    quant = {}
    if qlinear == "8w":
        quant = dict(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    elif qlinear == "4w":
        quant = dict(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=INT4_BLOCK_SIZE)
    specs = CoreMLBackend.generate_compile_specs(
        compute_precision=precision, minimum_deployment_target=getattr(ct.target, MIN_DEPLOYMENT),
        **({"op_linear_quantizer_config": quant} if quant else {}))
    partitioner = CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=True, lower_full_graph=True)
    say("lower to the Core ML delegate")
    edge = to_edge_transform_and_lower(programs, partitioner=[partitioner],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    summary = {}
    for method in programs:
        gm = edge.exported_program(method).graph_module
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        names = [getattr(n.target, "__name__", str(n.target)) for n in calls]
        outside = sorted({n for n in names if n not in ALLOWED_OUTSIDE})
        summary[method] = {"delegate_calls": names.count("executorch_call_delegate"), "ops_outside_delegates": outside}
        print(f"[coreml-pte] {method}: {summary[method]['delegate_calls']} Core ML delegate call(s), "
              f"outside: {outside or 'nothing'}", flush=True)
        if outside or summary[method]["delegate_calls"] != 1:
            raise RuntimeError(f"coreml-pte: method {method} is not one Core ML delegate: {summary[method]}")
    et = edge.to_executorch(ExecutorchBackendConfig())
    return et, summary


def extract_coreml_model(pte_bytes: bytes, into: Path) -> Path:
    """The Core ML model a `.pte`'s Core ML delegate refers to, unpacked as an `.mlpackage` under `into`."""
    from executorch.backends.apple.coreml import executorchcoreml
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(pte_bytes)
    refs = set()
    for plan in pte.program.execution_plan:
        for delegate in plan.delegates:
            if delegate.id != "CoreMLBackend":
                raise RuntimeError(f"unexpected delegate {delegate.id!r} in the program")
            data = pte.program.backend_delegate_data[delegate.processed.index].data
            if not data.startswith(b"CMJR"):
                raise RuntimeError("Core ML delegate payload is not a named-data reference (CMJR)")
            refs.add(json.loads(data[4:])["key"])
    if len(refs) != 1:
        raise RuntimeError(f"expected one shared Core ML model, the methods refer to {sorted(refs)}")
    key = refs.pop()
    named = pte.named_data
    if named is None or key not in named.pte_data:
        raise RuntimeError(f"Core ML model {key} is not in the program's named data")
    blob = bytes(named.buffers[named.pte_data[key].buffer_index])
    into.mkdir(parents=True, exist_ok=True)
    if not executorchcoreml.unflatten_directory_contents(blob, str(into)):
        raise RuntimeError("could not unpack the Core ML model from the .pte")
    packages = sorted(into.rglob("*.mlpackage"))
    if len(packages) != 1:
        raise RuntimeError(f"expected one .mlpackage in the delegate payload, found {packages or list(into.iterdir())}")
    return packages[0]


def export_coreml_pte(source: str, out: str | Path, *, qlinear: str = "fp16", max_seq_len: int = 1024,
                      prefill_chunk: int = 64, quality_gate: bool | None = None, force: bool = False,
                      progress: bool = True) -> dict:
    """Export `source` to a bundle with `model.pte` lowered entirely to Core ML; returns the validated manifest.

    Same arguments and gate as `export_coreml` (the delta-net state layout is always "io").
    """
    import coremltools  # noqa: F401

    from qwen_mobile.export.api import _stop_ids, check_context, load_model, manifest_identity, open_source
    from qwen_mobile.export.verify import VerificationError, compare_with_eager, gate
    from qwen_mobile.runtime import bundle

    from .evaluator import MILModel
    from .runner import CoreMLRunner

    if qlinear not in QLINEAR:
        raise UsageError(f"--qlinear {qlinear!r}: not valid for recipe coreml-pte; valid: {list(QLINEAR)}")
    if prefill_chunk < 2 or prefill_chunk > max_seq_len:
        raise UsageError(f"--prefill-chunk {prefill_chunk}: must be in [2, --max-seq-len {max_seq_len}]")
    out = Path(out)
    opened = open_source(source, out, force=force, quality_gate=quality_gate)
    source_dir, config, tokenizer, random_weights, quality_gate = (
        opened.source_dir, opened.config, opened.tokenizer, opened.random_weights, opened.quality_gate)
    check_context(max_seq_len, config)
    say = (lambda msg: print(f"[coreml-pte] {msg}", flush=True)) if progress else (lambda msg: None)

    t_all = time.perf_counter()
    model = load_model(source, max_seq_len=max_seq_len, gdn_impl="reference")
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    et, summary = lower_to_pte(CoreMLDecoder(model, "io"), prefill_chunk=prefill_chunk, qlinear=qlinear, say=say)
    lower_seconds = time.perf_counter() - t0
    shapes = state_shapes(config, max_seq_len)

    with bundle.staged_bundle(out, force, opened.source_dir) as staging:
        (staging / PROGRAM).write_bytes(et.buffer)
        del et
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if source_dir and (source_dir / name).is_file():
                shutil.copy(source_dir / name, staging / name)
        say("verify the delegate's Core ML model with the numpy MIL evaluator")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="coreml-pte-") as tmp:
            mil = MILModel(extract_coreml_model((staging / PROGRAM).read_bytes(), Path(tmp)))
            # The delegate's functions are named after the methods and its outputs after graph nodes (ExecuTorch
            # passes them by position): check them as the package recipe's, outputs by position.
            functions = {"forward": "prefill", DECODE_METHOD: "decode"}
            mil.functions = {functions.get(k, k): v for k, v in mil.functions.items()}
            check_package_spec(mil, config, max_seq_len, prefill_chunk, "io", positional_outputs=True)
            state = mil.new_state()

            def call(fn, inputs):
                return dict(zip(("logits", "conv_out", "rec_out"), mil.run(fn, inputs, state).values()))

            runner = CoreMLRunner(call, prefill_chunk=prefill_chunk, gdn_layout="io",
                                  io_shapes={n: shapes[n] for n in ("gdn_conv", "gdn_rec")})
            reference = fp16_kv(model) if qlinear == "fp32" else model
            prompt = verification_prompt(config.vocab_size, tokenizer, prefill_chunk)
            metrics = compare_with_eager(runner, reference, prompt,
                                         steps=min(VERIFY_DECODE_STEPS, max_seq_len - len(prompt)))
            histogram = {m: mil.op_histogram(f) for m, f in functions.items()}
        if qlinear == "fp32":
            result = gate(metrics, "fp32", "none", {"max_abs_logit_diff": FP32_REL_TOL}, quality_gate)
        else:
            result = gate(metrics, qlinear, "none", QUALITY_FLOORS[qlinear], quality_gate)
        verify_seconds = time.perf_counter() - t0
        if not result.passed:
            raise VerificationError("coreml-pte", result, qlinear == "fp32")

        vocab = config.vocab_size
        tensor = lambda n, shape, dtype: {"name": n, "shape": list(shape), "dtype": dtype}  # noqa: E731

        def method(tokens):
            return {"kind": "prefill" if tokens > 1 else "decode",
                    "inputs": [tensor("tokens", [1, tokens], "int32"), tensor("input_pos", [tokens], "int32"),
                               tensor("conv_in", shapes["gdn_conv"], "float32"),
                               tensor("rec_in", shapes["gdn_rec"], "float32")],
                    "outputs": [tensor("logits", [1, 1, vocab], "float32"),
                                tensor("conv_out", shapes["gdn_conv"], "float32"),
                                tensor("rec_out", shapes["gdn_rec"], "float32")],
                    "min_tokens": tokens, "max_tokens": tokens, "resets_state_at_position_0": True}

        manifest = {
            **manifest_identity(source, config, n_params, random_weights),
            "recipe": {"name": "coreml-pte", "backend": "coreml", "preset": None, "qlinear": qlinear,
                       "qembedding": qlinear if qlinear in ("8w", "4w") else "none", "group_size": INT4_BLOCK_SIZE,
                       "gdn_layout": "io", "compute_precision": "fp32" if qlinear == "fp32" else "fp16",
                       "minimum_deployment_target": MIN_DEPLOYMENT},
            "program": {"file": PROGRAM, "op_namespace": "qwen35", "kernel_namespaces": [],
                        "methods": {"forward": method(prefill_chunk), DECODE_METHOD: method(1)},
                        "graph": {m: dict(summary[m], coreml_ops=histogram[m]) for m in summary},
                        "prefill_rule": f"full {prefill_chunk}-token chunks through forward, the rest through "
                                        f"{DECODE_METHOD}"},
            "state": {"max_seq_len": max_seq_len, "max_batch_size": 1, "shared_between_methods": True,
                      "reset": "a call whose input_pos[0] == 0 zeroes every state first (in-graph)",
                      "buffers": [dict(tensor("kv_cache", shapes["kv_cache"], "float16"), seq_axis=2,
                                       storage="coreml_state")] +
                                 [dict(tensor(n, shapes[n], "float32"), seq_axis=None, storage="host_io")
                                  for n in ("gdn_conv", "gdn_rec")]},
            "tokenizer": {"file": "tokenizer.json" if (staging / "tokenizer.json").is_file() else None,
                          "config_file": ("tokenizer_config.json" if (staging / "tokenizer_config.json").is_file()
                                          else None),
                          "bos_id": config.bos_token_id, "stop_ids": _stop_ids(config, tokenizer),
                          "thinking_default": None},
            "verification": dict(result.as_dict(), quality_gate=quality_gate, prompt_tokens=len(prompt),
                                 evaluator="numpy MIL evaluator on the delegate's Core ML model (Linux)"),
            "export": {"seconds": round(time.perf_counter() - t_all, 1),
                       "stage_seconds": {"lower": round(lower_seconds, 1), "verify": round(verify_seconds, 1)}},
        }
        manifest = bundle.write_manifest(staging, manifest)
    return manifest
