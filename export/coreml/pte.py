"""Lowering for `--recipe coreml-pte` (export/recipes/coreml_pte.py): an ExecuTorch `.pte` whose every method is one
Core ML delegate call.

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
from pathlib import Path

from qwen_mobile.runtime.contract import TOKEN_METHODS

from .convert import INT4_BLOCK_SIZE, MIN_DEPLOYMENT
from .graph import CoreMLDecoder, check_gdn_nodes, example_inputs

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
    for method, tokens in zip(TOKEN_METHODS, (prefill_chunk, 1)):
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
