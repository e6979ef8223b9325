"""Verify a Core ML bundle with `MLModel.predict` on a Mac: the same comparison the export runs on Linux.

    python scripts/verify_coreml_on_mac.py BUNDLE [--compute-units ALL|CPU_ONLY|CPU_AND_GPU|CPU_AND_NE] [--steps 16]
                                                  [--image]

Runs the bundle's package through Core ML (macOS 15+ for states and multifunction packages) on the export's
verification prompt, teacher-forced against eager torch, applies the export's gate, and, with --also-evaluator, runs
the numpy MIL evaluator on the same calls so the Linux numbers can be checked against the device. `--backend
evaluator` takes the identical path without Core ML (how this module is tested on Linux). `--image` (bundles with a
vision package) also runs the export's image-prompt gate: the synthetic test card at the smallest size through
`vision.mlpackage` and the text functions that take embeddings. Exit status 1 if a gate fails, 2 on a bad request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def coreml_call(package: Path, compute_units: str, state_names: list[str], info: dict | None = None,
                stateless: tuple[str, ...] = ()):
    """call(function, inputs) -> outputs over MLModel.predict, the states carried from one function to the other.

    Both functions declare the same states, so one MLState should serve both; whether Core ML accepts a state made
    by the other function's MLModel is not documented, so on refusal this falls back to copying the state values
    (MLState.read_state / write_state) when the function changes. `info["state_sharing"]` says which happened.
    """
    import coremltools as ct

    if sys.platform != "darwin":
        raise RuntimeError("MLModel.predict needs macOS (15+ for stateful multifunction packages); on Linux use "
                           "--backend evaluator")
    info = {} if info is None else info
    units = getattr(ct.ComputeUnit, compute_units)

    class Models(dict):  # one MLModel per function, loaded when first called (image functions: only with --image)
        def __missing__(self, fn):
            self[fn] = ct.models.MLModel(str(package), function_name=fn, compute_units=units)
            return self[fn]

    models = Models()
    shared = models["decode"].make_state()

    class States(dict):
        def __missing__(self, fn):
            self[fn] = models[fn].make_state()
            return self[fn]

    own = States()
    mode = {"shared": True, "last": None}
    info["state_sharing"] = "one MLState for both functions"

    def call(fn, inputs):
        if fn in stateless:  # embed: no state to share
            return models[fn].predict(inputs)
        if mode["shared"]:
            try:
                return models[fn].predict(inputs, state=shared)
            except Exception as err:  # noqa: BLE001 - any refusal switches to copying, and is reported
                mode["shared"] = False
                info["state_sharing"] = f"copied between per-function MLStates ({type(err).__name__}: {err})"
                for name in state_names:
                    own[fn].write_state(name, shared.read_state(name))
                mode["last"] = fn
        if mode["last"] not in (None, fn):
            for name in state_names:
                own[fn].write_state(name, own[mode["last"]].read_state(name))
        mode["last"] = fn
        return models[fn].predict(inputs, state=own[fn])

    return call


def evaluator_call(package: Path):
    from .evaluator import MILModel

    mil = MILModel(package)
    state = mil.new_state()
    return lambda fn, inputs: mil.run(fn, inputs, state)


def coreml_vision_call(package: Path, compute_units: str):
    """call(function, inputs) over the stateless vision package's functions."""
    import coremltools as ct

    units = getattr(ct.ComputeUnit, compute_units)
    models = {}

    def call(fn, inputs):
        if fn not in models:
            models[fn] = ct.models.MLModel(str(package), function_name=fn, compute_units=units)
        return models[fn].predict(inputs)

    return call


def verify(bundle_dir: str | Path, *, backend: str = "coreml", compute_units: str = "ALL", steps: int | None = None,
           also_evaluator: bool = False, source: str | None = None, image: bool = False) -> dict:
    """The export's text gate through `backend`; image=True also its image-prompt gate (the bundle's vision package,
    the synthetic test card at the smallest size, CONTRACT.md's steps) as report["image"]."""
    from qwen_mobile.export.source import load_model, resolve_source
    from qwen_mobile.export.verify import compare_with_eager, gate
    from qwen_mobile.runtime import bundle

    from .plan import FP32_REL_TOL, PACKAGE, QUALITY_FLOORS, VERIFY_DECODE_STEPS, verification_prompt
    from .graph import fp16_kv
    from .runner import CoreMLRunner

    bundle_dir = Path(bundle_dir)
    manifest = bundle.load_manifest(bundle_dir)
    if manifest["recipe"]["name"] != "coreml":
        raise ValueError(f"{bundle_dir}: recipe {manifest['recipe']['name']!r}, not a coreml bundle")
    if image and "vision" not in manifest:
        raise ValueError(f"--image: {bundle_dir} has no vision package (exported from a checkpoint without a vision "
                         "tower, or with --no-vision)")
    qlinear = manifest["recipe"]["qlinear"]
    layout = manifest["recipe"]["gdn_layout"]
    prefill_chunk = manifest["program"]["methods"]["forward"]["max_tokens"]
    max_seq_len = manifest["state"]["max_seq_len"]
    packages = [p["file"] for p in manifest["program"].get("packages", [{"file": PACKAGE}])]

    def io_shapes(file):
        return {b["name"]: tuple(b["shape"]) for b in manifest["state"]["buffers"]
                if b["storage"] == "host_io" and b.get("package", PACKAGE) == file}

    def state_names(file):
        return [b["name"] for b in manifest["state"]["buffers"]
                if b["storage"] == "coreml_state" and b.get("package", PACKAGE) == file]
    source = source or manifest["model"]["source"]
    resolve_source(source)  # a clear error if the checkpoint is not on this machine
    model = load_model(source, max_seq_len=max_seq_len, gdn_impl="reference")
    reference = fp16_kv(model) if qlinear == "fp32" else model
    tokenizer = None
    if (bundle_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    prompt = verification_prompt(model.config.vocab_size, tokenizer, prefill_chunk)
    steps = steps if steps is not None else min(VERIFY_DECODE_STEPS, max_seq_len - len(prompt))

    info: dict = {}

    def chain(kind):
        """[(call, io_shapes)] over every package, first to last (one entry unless the model is split)."""
        calls = []
        for file in packages:
            call = (coreml_call(bundle_dir / file, compute_units, state_names(file), info, stateless=("embed",))
                    if kind == "coreml" else evaluator_call(bundle_dir / file))
            calls.append((call, io_shapes(file)))
        return calls

    runner = CoreMLRunner(prefill_chunk=prefill_chunk, parts=chain(backend))
    metrics = compare_with_eager(runner, reference, prompt, steps=steps)
    if qlinear == "fp32":
        result = gate(metrics, "fp32", "none", {"max_abs_logit_diff": FP32_REL_TOL}, True)
    else:
        result = gate(metrics, qlinear, "none", QUALITY_FLOORS[qlinear], not manifest["model"]["random_weights"])
    report = {"bundle": str(bundle_dir), "backend": backend, "compute_units": compute_units if backend == "coreml"
              else None, "qlinear": qlinear, "gdn_layout": layout, **info, **result.as_dict()}
    if also_evaluator and backend == "coreml":
        # Same calls through both: how far the Linux evaluator is from this device.
        device = CoreMLRunner(prefill_chunk=prefill_chunk, parts=chain("coreml"))
        numpy_eval = CoreMLRunner(prefill_chunk=prefill_chunk, parts=chain("evaluator"))
        a, b = device.prefill(prompt, 0), numpy_eval.prefill(prompt, 0)
        diffs = [float((a - b).abs().max())]
        pos = len(prompt)
        for _ in range(steps):
            token = int(a.argmax())
            a, b = device.decode(token, pos), numpy_eval.decode(token, pos)
            diffs.append(float((a - b).abs().max()))
            pos += 1
        report["device_vs_evaluator_max_abs_logit_diff"] = max(diffs)
    report["finite"] = bool(np.isfinite(report["max_abs_logit_diff"]))
    if image:
        report["image"] = _verify_image(manifest, bundle_dir, source, reference, tokenizer, prefill_chunk,
                                        chain(backend), backend, compute_units, steps, qlinear)
        report["passed"] = report["passed"] and report["image"]["passed"]
    return report


def _verify_image(manifest, bundle_dir, source, reference, tokenizer, prefill_chunk, parts, backend, compute_units,
                  steps, qlinear) -> dict:
    """The export's image-prompt gate through `backend`: test card, smallest size, eager fp32 Qwen35VisionLanguage."""
    from qwen_mobile.export.source import resolve_source
    from qwen_mobile.export.verify import compare_image_with_reference, eager_image_reference, gate, image_prompt
    from qwen_mobile.models.vision import Qwen35VisionModel
    from qwen_mobile.models.vision_language import Qwen35VisionLanguage
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig
    from qwen_mobile.runtime.images import synthetic_image

    from .plan import FP32_REL_TOL, QUALITY_FLOORS
    from .runner import CoreMLRunner

    folder = resolve_source(source)
    visual = Qwen35VisionModel.from_pretrained(folder).eval()
    processor = ImageProcessorConfig.from_pretrained(folder, visual.config)
    vision = manifest["vision"]
    smallest = min(vision["images"], key=lambda i: (i["height"] * i["width"], (i["height"], i["width"])))
    package = bundle_dir / vision["package"]["file"]
    runner = CoreMLRunner(prefill_chunk=prefill_chunk, parts=parts,
                          vision=coreml_vision_call(package, compute_units) if backend == "coreml"
                          else evaluator_call(package))
    prompt = image_prompt(visual.config, smallest["tokens"], reference.config.vocab_size, tokenizer)
    rgb = synthetic_image(smallest["height"], smallest["width"]).permute(1, 2, 0).contiguous()  # [H,W,3]
    steps = min(steps, manifest["state"]["max_seq_len"] - len(prompt))
    ref = eager_image_reference(Qwen35VisionLanguage(reference, visual), processor, rgb, smallest["method"], prompt,
                                steps)
    metrics = compare_image_with_reference(runner, ref, visual.config.image_token_id)
    if qlinear == "fp32":
        result = gate(metrics, "fp32", "none", {"max_abs_logit_diff": FP32_REL_TOL}, True)
    else:
        result = gate(metrics, qlinear, "none", QUALITY_FLOORS[qlinear], not manifest["model"]["random_weights"])
    return dict(result.as_dict(), method=smallest["method"], prompt_tokens=len(prompt))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Verify a qwen-mobile Core ML bundle with MLModel.predict (macOS).")
    p.add_argument("bundle", type=Path)
    p.add_argument("--compute-units", default="ALL", choices=COMPUTE_UNITS)
    p.add_argument("--backend", default="coreml", choices=("coreml", "evaluator"))
    p.add_argument("--steps", type=int, default=None, help="decode steps after the prompt (default: the export's)")
    p.add_argument("--also-evaluator", action="store_true", help="also report device vs numpy evaluator")
    p.add_argument("--source", default=None, help="checkpoint for the eager reference (default: the manifest's)")
    p.add_argument("--image", action="store_true",
                   help="also run the export's image-prompt gate through the bundle's vision package (bundles from a "
                        "checkpoint with a vision tower)")
    args = p.parse_args(argv)
    try:
        report = verify(args.bundle, backend=args.backend, compute_units=args.compute_units, steps=args.steps,
                        also_evaluator=args.also_evaluator, source=args.source, image=args.image)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
