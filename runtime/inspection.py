"""`qwen-mobile inspect`: what is inside a bundle, read from the .pte itself rather than trusted from the manifest.

Per method: instructions, how many are delegate calls (and to which backend), which operators run outside a delegate
and how often; per program: bytes of delegate payloads (weights packed for XNNPACK) vs constants the portable and
our kernels read. "Delegated share" is the share of a method's instructions that are delegate calls, and the share of
weight bytes that live inside delegates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def read_program(pte_path: str | Path):
    from executorch.exir._serialize._program import deserialize_pte_binary

    return deserialize_pte_binary(Path(pte_path).read_bytes())


def inspect_program(pte_path: str | Path) -> dict:
    pte = read_program(pte_path)
    program = pte.program
    delegate_bytes = [len(d.data) for d in program.backend_delegate_data]
    # XNNPACK keeps its packed weights in the named data store, outside its payloads; only delegates read it.
    named_bytes = sum(len(b) for b in getattr(pte.named_data, "buffers", None) or [])
    constant_bytes = sum(len(c.storage) for c in program.constant_buffer)
    methods = {}
    for plan in program.execution_plan:
        ops = Counter()
        backends = Counter()
        delegate_calls = 0
        n = 0
        for chain in plan.chains:
            for instr in chain.instructions:
                args = instr.instr_args
                kind = type(args).__name__
                if kind == "KernelCall":
                    n += 1
                    ops[plan.operators[args.op_index].name] += 1
                elif kind == "DelegateCall":
                    n += 1
                    delegate_calls += 1
                    backends[plan.delegates[args.delegate_index].id] += 1
        methods[plan.name] = {"instructions": n, "delegate_calls": delegate_calls, "backends": dict(backends),
                              "ops_outside": dict(ops.most_common()),
                              "delegated_share": delegate_calls / n if n else None}
    return {"methods": methods, "delegate_payload_bytes": sum(delegate_bytes), "named_data_bytes": named_bytes,
            "constant_bytes": constant_bytes, "delegate_payloads": len(delegate_bytes)}


def format_report(folder: Path, manifest: dict, report: dict, bundle_hash: str) -> str:
    m, r = manifest, manifest["recipe"]
    cfg = m["model"]["config"]
    lines = [f"bundle {folder}  (hash {bundle_hash[:16]}…)", ""]
    lines.append(f"model     {m['model']['id']}: {m['model']['params'] / 1e6:.2f} M params, "
                 f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}"
                 + (" (random weights)" if m["model"].get("random_weights") else ""))
    lines.append(f"recipe    {r['name']} qlinear={r['qlinear']} qembedding={r['qembedding']} group={r['group_size']}"
                 + (f", tied table stored {r['tied_table_copies']}x" if r.get("tied_table_copies") else ""))
    lines.append(f"context   {m['state']['max_seq_len']} tokens; prefill chunk "
                 f"{m['program']['methods']['forward']['max_tokens']}; stop ids {m['tokenizer']['stop_ids']}; "
                 f"thinking default {m['tokenizer'].get('thinking_default')}")
    state_bytes = sum(_numel(b["shape"]) * 4 for b in m["state"]["buffers"])
    lines.append(f"state     {len(m['state']['buffers'])} buffers, {state_bytes / 1e6:.2f} MB "
                 f"(KV caches at full context + conv + recurrent)")
    ver = m.get("verification") or {}
    if ver:
        lines.append(f"verified  {'PASS' if ver.get('passed') else 'FAIL'} at export: top-1 "
                     f"{ver.get('top1_agreement', 0):.1%}, max |dlogit| {ver.get('max_abs_logit_diff', 0):.2e}")
    lines += ["", "files"]
    for name, entry in m["files"].items():
        lines.append(f"  {name:<28} {entry['bytes'] / 1e6:>9.2f} MB  sha256 {entry['sha256'][:16]}…")
    delegated = report["delegate_payload_bytes"] + report["named_data_bytes"]
    total = delegated + report["constant_bytes"]
    lines += ["", f"program   {report['delegate_payloads']} delegate payloads + named data: {delegated / 1e6:.2f} MB "
                  f"read by delegates; {report['constant_bytes'] / 1e6:.2f} MB constants read by portable/our "
                  f"kernels ({delegated / total if total else 0:.1%} of the bytes delegated)", "", "methods"]
    constants = [name for name, info in report["methods"].items() if not info["instructions"]]
    for name, info in report["methods"].items():
        if not info["instructions"]:
            continue
        backends = ", ".join(f"{k} x{v}" for k, v in info["backends"].items()) or "none"
        lines.append(f"  {name:<16} {info['instructions']} instructions, {info['delegate_calls']} delegate calls "
                     f"({backends}), {info['delegated_share']:.0%} delegated")
        for op, count in info["ops_outside"].items():
            lines.append(f"  {'':<16}   {count:>4} x {op}")
    if constants:
        lines.append(f"  metadata (constant methods for ExecuTorch's LLM runner): {', '.join(constants)}")
    return "\n".join(lines)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
