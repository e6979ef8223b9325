"""Write the engine-plan vectors the iOS app's planner must reproduce: tests/apps/vectors/engine_plan_*.json.

    .venv/bin/python tests/apps/make_engine_plans.py [--out tests/apps/vectors] [--work DIR] [--recipes pte coreml ...]

Each vector is what Python's own runtime does with a real bundle exported here from the shipped nano model (small
context so the export takes about a minute): the manifest, then for a few conversations (turns of prompt ids with the
number of tokens generated greedily) the exact calls the runtime made into the program, in order, with every input's
name, shape, dtype and, for token ids and positions, the values. Nothing here is derived from the Swift code:

- `.pte` (recipe xnnpack, fp32): `runtime.session.Session` over `runtime.program.BundleProgram`, its two ExecuTorch
  methods wrapped so every `execute` is recorded on the way to the real program.
- Core ML (recipe coreml, one package and a model split over three): the same `Session` driving
  `export.coreml.runner.CoreMLRunner` (the runner the export gate and scripts/verify_coreml_on_mac.py use) over the
  numpy MIL evaluator of the saved packages, every package call recorded.

- Core ML with images (`coreml_vision`, one package; `coreml_vision_split`, three): the tiny random VLM of the vision
  tests exported with `--image-sizes 32,32x48`, the same `Session` asked image questions (runtime/images.py's
  synthetic test card at one of the sizes) over `CoreMLRunner` with the vision package, so every call of CONTRACT.md's
  image steps is recorded: `encode_image_<H>x<W>` in vision.mlpackage, `embed` (padded to the chunk), full chunks of
  `prefill_embeddings`, the rest through `decode_embeddings`, `decode_rope` (a chain's later packages:
  `decode_embeddings` with the rotary position in all three rows). Those vectors add what the iOS engine test replays:
  `rope_pos` values, the row sums of every `embeds` input and the sum of every `rgb`, the outputs of `embed` and
  `encode_image_*` (float32 little-endian, base64: its fake returns them, so the spliced embeddings it feeds must sum
  as Python's did), and on each call whose logits were sampled, `next_token`.

The same `Session` for every recipe means the turn bookkeeping (the sampled last token of a turn is fed first in the
next one) and the image prompt's layout are the runtime's, not a re-implementation.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VECTORS = Path(__file__).resolve().parent / "vectors"
CONTEXT = 64  # max_seq_len of every bundle here: exports stay small and fast
PREFILL_CHUNK = 8
# The conversations every recipe is driven through: [(prompt ids, tokens to generate)] per turn. They cover a prompt
# shorter than a chunk, exact chunks, chunks with a remainder, one generated token (no decode call), and a second
# turn that starts with the first turn's pending token at a non-zero position.
CONVERSATIONS = {
    "one_turn_ragged": [(list(range(40, 59)), 4)],          # 19 tokens: 8 + 8 + 3
    "exact_chunk_one_token": [(list(range(100, 108)), 1)],  # 8 tokens, nothing decoded
    "short_prompt": [([7, 11, 13], 3)],
    "two_turns": [([300, 301, 302, 303, 304], 3), ([400, 401, 402, 403, 404, 405, 406, 407, 408, 409], 2)],
}
# Manifest parts that are reports, not contracts (op histograms, timings); dropped to keep the vectors readable.
DROPPED = {("program", "graph"), ("export", None), ("verification", None)}


def _slim_manifest(manifest: dict) -> dict:
    m = json.loads(json.dumps(manifest))
    for top, sub in DROPPED:
        if sub is None:
            m.pop(top, None)
        elif top in m:
            m[top].pop(sub, None)
    return m


def _evaluator_parts(out: Path, packages: list[str], buffers: list[dict], recording) -> list:
    """Each package of the chain as (recorded evaluator call, its host-io buffer shapes), as CoreMLRunner takes them."""
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.export.coreml.runner import evaluator_call

    parts = []
    for file in packages:
        io = {b["name"]: tuple(b["shape"]) for b in buffers if b["storage"] == "host_io" and b.get("package") == file}
        parts.append((recording(evaluator_call(MILModel(out / file)), file), io))
    return parts


def _tensor_record(name: str, value, with_values: bool) -> dict:
    arr = np.asarray(value)
    rec = {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    if with_values:
        rec["values"] = [int(v) for v in arr.reshape(-1)]
    return rec


class _FakeBundle:
    """What runtime.session.Session reads from a bundle, over any program with prefill/decode."""

    def __init__(self, manifest: dict, program):
        self.manifest, self.program = manifest, program
        self.max_seq_len = manifest["state"]["max_seq_len"]
        self.vocab_size = manifest["model"]["config"]["vocab_size"]
        self.stop_ids = set(manifest["tokenizer"]["stop_ids"])
        self.vision = manifest.get("vision")  # Session.prefill asks before every prompt (images need Bundle.vision)
        self.folder = "engine-plan bundle"


def _drive(session_factory, calls: list, conversation) -> dict:
    """Run one conversation greedily through a fresh Session; returns the case with the recorded calls."""
    from qwen_mobile.runtime.sampling import Sampler, SamplingConfig

    calls.clear()
    session = session_factory()
    turns = []
    for prompt, n_new in conversation:
        out = session.generate(list(prompt), n_new, Sampler(SamplingConfig(temperature=0.0)), stop_ids=set())
        turns.append({"prompt_ids": list(prompt), "generated_ids": list(out.ids)})
    return {"turns": turns, "calls": list(calls)}


# -- .pte ---------------------------------------------------------------------------------------------------------

class _RecordingMethod:
    def __init__(self, method, name: str, input_names: list[str], calls: list):
        self.method, self.name, self.input_names, self.calls = method, name, input_names, calls

    def execute(self, inputs):
        self.calls.append({"method": self.name, "inputs": [
            _tensor_record(n, t.numpy(), with_values=True) for n, t in zip(self.input_names, inputs, strict=True)]})
        return self.method.execute(inputs)


def pte_vector(work: Path) -> dict:
    from qwen_mobile.export import export
    from qwen_mobile.runtime.contract import DECODE_METHOD
    from qwen_mobile.runtime.bundle import Bundle
    from qwen_mobile.runtime.session import Session

    out = work / "nano-xnnpack-fp32"
    if not (out / "manifest.json").is_file():
        export("nano", out, preset="xnnpack-fp32", max_seq_len=CONTEXT, max_prefill_chunk=PREFILL_CHUNK,
               progress=False)
    bundle = Bundle(out)
    methods = bundle.manifest["program"]["methods"]
    calls: list = []
    program = bundle.program
    program._forward = _RecordingMethod(program._forward, "forward",
                                        [t["name"] for t in methods["forward"]["inputs"]], calls)
    program._decode = _RecordingMethod(program._decode, DECODE_METHOD,
                                       [t["name"] for t in methods[DECODE_METHOD]["inputs"]], calls)
    cases = {name: _drive(lambda: Session(bundle), calls, conv) for name, conv in CONVERSATIONS.items()}
    return {"recipe": "xnnpack", "driver": "runtime.session.Session over runtime.program.BundleProgram",
            "manifest": _slim_manifest(bundle.manifest), "cases": cases}


# -- Core ML -------------------------------------------------------------------------------------------------------

def coreml_vector(work: Path, split: bool) -> dict:
    from qwen_mobile.export import export
    from qwen_mobile.export.coreml.runner import CoreMLRunner
    from qwen_mobile.runtime.bundle import load_manifest
    from qwen_mobile.runtime.session import Session

    name = "nano-coreml-split" if split else "nano-coreml"
    out = work / name
    if not (out / "manifest.json").is_file():
        # nano fp16 is about 20 MB: an 8 MB limit splits it into three packages (first, middle, last).
        export("nano", out, recipe="coreml", qlinear="fp16", max_seq_len=CONTEXT, prefill_chunk=PREFILL_CHUNK,
                      max_package_bytes=8_000_000 if split else 1_400_000_000, progress=False)
    manifest = load_manifest(out)
    packages = [p["file"] for p in manifest["program"]["packages"]]
    buffers = manifest["state"]["buffers"]
    calls: list = []

    def recording(call, package):
        def run(function, inputs):
            calls.append({"package": package, "function": function, "inputs": [
                _tensor_record(k, v, with_values=k in ("tokens", "input_pos")) for k, v in inputs.items()]})
            outputs = call(function, inputs)
            calls[-1]["outputs"] = sorted(outputs)
            return outputs
        return run

    def factory():
        parts = _evaluator_parts(out, packages, buffers, recording)
        runner = CoreMLRunner(prefill_chunk=manifest["program"]["methods"]["forward"]["max_tokens"], parts=parts)
        return Session(_FakeBundle(manifest, _SessionAdapter(runner)))

    cases = {cname: _drive(factory, calls, conv) for cname, conv in CONVERSATIONS.items()}
    return {"recipe": "coreml", "driver": "runtime.session.Session over export.coreml.runner.CoreMLRunner "
            "(numpy MIL evaluator)", "manifest": _slim_manifest(manifest), "cases": cases}


class _SessionAdapter:
    """Session calls program.prefill(ids, start_pos=...); CoreMLRunner names the argument `start`."""

    def __init__(self, runner):
        self.runner = runner

    def prefill(self, ids, start_pos=0):
        return self.runner.prefill(ids, start_pos)

    def decode(self, token, pos):
        return self.runner.decode(token, pos)

    def encode_image(self, method, rgb):
        return self.runner.encode_image(method, rgb)

    def embed(self, ids):
        return self.runner.embed(ids)

    def prefill_embeddings(self, embeds, start, rope_pos):
        return self.runner.prefill_embeddings(embeds, start, rope_pos)

    def decode_rope(self, token, pos, rope):
        return self.runner.decode_rope(token, pos, rope)


# -- Core ML with images --------------------------------------------------------------------------------------------

IMAGE_SIZES = "32,32x48"
IMAGE = "<image>"  # where a turn's image goes: replaced by vision_start, one image token, vision_end
# Per turn: (prompt with IMAGE or not, the image (H, W) of the synthetic test card or None, tokens to generate). They
# cover an image prompt of full chunks and a remainder (3 + 26 + 2 tokens: 3 chunks, 7 one by one), a text turn after
# an image (still through the embeddings functions, the rotary position behind the slot, the pending token first), an
# image that starts the prompt at the other size, and a text-only conversation on the vision bundle (token functions).
VISION_CONVERSATIONS = {
    "image_then_text": [([11, 42, 7, IMAGE, 5, 17], (32, 48), 4), (list(range(60, 69)), None, 3)],
    "image_first_square": [([IMAGE], (32, 32), 2)],
    "text_only": [(list(range(40, 51)), None, 3)],
}


def _float32_base64(values) -> str:
    """Float values, exact and compact: float32 little-endian bytes, row-major, base64."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def vision_checkpoint(work: Path) -> Path:
    """tests/export/test_vision_bundle.vlm_checkpoint's model (tower B, text weights scaled), saved once in `work`."""
    folder = work / "tiny-vlm-B"
    if (folder / "config.json").is_file():
        return folder
    sys.path[:0] = [str(ROOT / "tests" / "models"), str(ROOT / "tests" / "export"), str(ROOT / "tests")]
    from test_vision_bundle import write_vlm_checkpoint

    return write_vlm_checkpoint(folder, "B")


def coreml_vision_vector(work: Path, split: bool) -> dict:
    import warnings

    from qwen_mobile.export import export
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.export.coreml.runner import CoreMLRunner, evaluator_call
    from qwen_mobile.runtime.bundle import load_manifest
    from qwen_mobile.runtime.images import bundle_image, image_span, synthetic_image
    from qwen_mobile.runtime.sampling import Sampler, SamplingConfig
    from qwen_mobile.runtime.session import Session

    src = vision_checkpoint(work)
    out = work / ("tiny-vlm-coreml-split" if split else "tiny-vlm-coreml")
    if not (out / "manifest.json").is_file():
        options = {}
        if split:
            from qwen_mobile.models import Qwen35ForCausalLM

            # About one layer per package above the embedding table: the 4 layers go into three packages.
            model = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=CONTEXT)
            layer_bytes = max(sum(p.numel() for p in layer.parameters()) * 4 for layer in model.model.layers)
            options["max_package_bytes"] = model.model.embed_tokens.weight.numel() * 4 + int(1.5 * layer_bytes)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no tokenizer.json.*")
            export(str(src), out, recipe="coreml", qlinear="fp32", max_seq_len=CONTEXT, prefill_chunk=PREFILL_CHUNK,
                   image_sizes=IMAGE_SIZES, progress=False, **options)
    manifest = load_manifest(out)
    vision = manifest["vision"]
    packages = [p["file"] for p in manifest["program"]["packages"]]
    buffers = manifest["state"]["buffers"]
    calls: list = []

    def record_input(name, value) -> dict:
        rec = _tensor_record(name, value, with_values=name in ("tokens", "input_pos", "rope_pos"))
        arr = np.asarray(value, np.float64)
        if name == "embeds":  # [1,T,hidden] -> T row sums
            rec["row_sums"] = [float(v) for v in arr.reshape(arr.shape[1], -1).sum(axis=1)]
            rec["abs_sum"] = float(np.abs(arr).sum())
        elif name == "rgb":
            rec["sum"] = float(arr.sum())
        return rec

    def recording(call, package):
        def run(function, inputs):
            calls.append({"package": package, "function": function,
                          "inputs": [record_input(k, v) for k, v in inputs.items()]})
            outputs = call(function, inputs)
            calls[-1]["outputs"] = sorted(outputs)
            replayed = {k: _float32_base64(v) for k, v in outputs.items() if k in ("embeds", "image_embeds")}
            if replayed:
                calls[-1]["output_f32le_base64"] = replayed
            return outputs
        return run

    def factory():
        parts = _evaluator_parts(out, packages, buffers, recording)
        vision_file = vision["package"]["file"]
        runner = CoreMLRunner(prefill_chunk=manifest["program"]["methods"]["forward"]["max_tokens"], parts=parts,
                              vision=recording(evaluator_call(MILModel(out / vision_file)), vision_file))
        return Session(_FakeBundle(manifest, _SessionAdapter(runner)))

    def sampled(token):
        calls[-1]["next_token"] = int(token)  # the call whose logits the session just sampled

    cases = {}
    for cname, conversation in VISION_CONVERSATIONS.items():
        calls.clear()
        session, turns = factory(), []
        for prompt, size, n_new in conversation:
            ids = [t for piece in prompt for t in (image_span(vision) if piece == IMAGE else [piece])]
            images = [] if size is None else [bundle_image(synthetic_image(*size), vision, source="synthetic_image",
                                                           size=size)]
            result = session.generate(ids, n_new, Sampler(SamplingConfig(temperature=0.0)), stop_ids=set(),
                                      on_token=sampled, images=images)
            turn = {"prompt_ids": ids, "generated_ids": list(result.ids), "image": None}
            if images:
                turn["image"] = {"method": images[0].method, "height": size[0], "width": size[1],
                                 "pixels": "runtime/images.py synthetic_image(height, width), [3,H,W] -> [H,W,3]"}
            turns.append(turn)
        cases[cname] = {"turns": turns, "calls": list(calls)}
    return {"recipe": "coreml", "driver": "runtime.session.Session (images) over export.coreml.runner.CoreMLRunner "
            "(numpy MIL evaluator) with the vision package", "source": "tiny random VLM (tests/models/"
            "test_vision_parity.make_hf_vlm('B'), text weights x TEXT_WEIGHT_SCALE), fp32, --image-sizes "
            f"{IMAGE_SIZES}", "manifest": _slim_manifest(manifest), "cases": cases}


RECIPES = {
    "pte": lambda work: pte_vector(work),
    "coreml": lambda work: coreml_vector(work, split=False),
    "coreml_split": lambda work: coreml_vector(work, split=True),
    "coreml_vision": lambda work: coreml_vision_vector(work, split=False),
    "coreml_vision_split": lambda work: coreml_vision_vector(work, split=True),
}


def bundle_hash(manifest: dict) -> str:
    from qwen_mobile.runtime.bundle import bundle_hash as runtime_bundle_hash

    return runtime_bundle_hash(manifest)


def write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=VECTORS, help="folder for engine_plan_<recipe>.json (default: %(default)s)")
    p.add_argument("--work", type=Path, default=None, help="folder for the exported bundles (kept; default: a temp dir)")
    p.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="engine-plans-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for recipe in args.recipes:
            t0 = time.perf_counter()
            doc = {"format": "qwen-mobile-engine-plan", "version": 1, "generator": "tests/apps/make_engine_plans.py",
                   **RECIPES[recipe](work)}
            doc["bundle_hash"] = bundle_hash(doc["manifest"])  # runtime/bundle.py's identity, for the apps to match
            path = args.out / f"engine_plan_{recipe}.json"
            write_json(path, doc)
            n_calls = sum(len(c["calls"]) for c in doc["cases"].values())
            print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(doc['cases'])} cases, "
                  f"{n_calls} calls ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
