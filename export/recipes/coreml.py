"""`--recipe coreml`: a stateful multifunction `.mlpackage` (iOS 18+), verified on Linux by the numpy MIL evaluator.

The bundle holds `model.mlpackage` (or `model_0.mlpackage`, ... when split) with two functions sharing weights and
states: "prefill" (exactly `prefill_chunk` tokens, chunked delta rule) and "decode" (one token). The attention caches
of all layers are one fp16 Core ML state; the delta-net state is fp32 input/output (`gdn_layout="io"`, the default,
export/coreml/README.md) or two more fp16 states (`"state"`). Before the bundle appears, the saved package is run by
the numpy MIL evaluator against eager torch and must pass the gate for `qlinear`.

From a checkpoint with a vision tower (unless vision=False / --no-vision) the bundle also holds `vision.mlpackage`
(one function `encode_image_<H>x<W>` per image size, fp16 like the text, weights quantized by `qlinear`), and the
text package(s) gain the functions that take embeddings (`embed`, `prefill_embeddings`, `decode_embeddings`,
`decode_rope`: runtime/CONTRACT.md, "Images"); a second gate runs the image prompt (export/coreml/README.md, "Images").
"""

from __future__ import annotations

import warnings

from qwen_mobile.runtime import contract
from qwen_mobile.runtime.errors import UsageError

from .. import source as sources
from ..coreml.convert import ANE_PACKAGE_LIMIT_BYTES, INT4_BLOCK_SIZE, MIN_DEPLOYMENT, QLINEAR
from ..coreml.graph import GDN_LAYOUTS, state_shapes
from ..coreml.plan import (DEFAULT_MAX_SEQ_LEN, DEFAULT_PREFILL_CHUNK, FP32_REL_TOL, QUALITY_FLOORS,
                           VERIFY_DECODE_STEPS, check_package_spec, check_vision_spec, plan_packages,
                           verification_prompt)
from .base import ExportJob, Recipe, quality_gate_flag, verification_record
from .xnnpack import DEFAULT_IMAGE_SIZES, parse_image_sizes

# Tower linears whose weights --qlinear 8w/4w leaves in fp16 (export/coreml/README.md, "Images", has the numbers).
VISION_KEEP_UNQUANTIZED = {
    "patch_embed.proj": "the pixels' projection, 1 % of the tower's weights; quantized at 4w it raised the tower's "
                        "error from 1.72e-1 to 1.84e-1 (0.8B shape) and 2.4e-2 to 4.5e-2 (tiny)",
}


def check_image_sizes(sizes, max_seq_len: int, vision) -> None:
    """Every size is a whole number of merged tokens, fits the context, and the gate's prompt around the smallest fits
    (the xnnpack recipe's rules and messages)."""
    from qwen_mobile.models.vision_export import image_grid

    factor = vision.patch_size * vision.spatial_merge_size
    for h, w in sizes:
        try:
            image_grid(h, w, vision)
        except ValueError:
            raise UsageError(f"--image-sizes {h}x{w}: both sides must be positive multiples of {factor} "
                             f"(patch_size {vision.patch_size} x spatial_merge_size {vision.spatial_merge_size})"
                             ) from None
        if h * w // factor ** 2 + 2 > max_seq_len:
            raise UsageError(f"--image-sizes {h}x{w}: one image takes {h * w // factor ** 2} tokens (plus its two "
                             f"markers), more than the context, --max-seq-len {max_seq_len}")
    smallest = min(h * w for h, w in sizes) // factor ** 2
    if smallest + 32 > max_seq_len:
        raise UsageError(f"--image-sizes: the smallest size takes {smallest} tokens, which with the gate's question "
                         f"does not fit --max-seq-len {max_seq_len}")


class CoreMLRecipe(Recipe):
    NAME = "coreml"
    DESCRIPTION = "stateful multifunction .mlpackage for iOS 18+ (Core ML: Neural Engine, GPU or CPU)"
    LABEL = "Core ML"
    STAGES = ("load", "convert", "verify")
    STAGED_FROM = "convert"

    def __init__(self, *, qlinear: str = "fp16", max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, gdn_layout: str = "io", gdn_fp32: bool = False,
                 head_fp32: bool = False, max_package_bytes: int = ANE_PACKAGE_LIMIT_BYTES,
                 quality_gate: bool | None = None, image_sizes=None, vision: bool = True):
        """qlinear: "fp16" (fp16 weights and compute), "8w" (int8 per channel), "4w" (int4, blocks of 32), or "fp32"
        (fp32 compute; for verification, not for phones). gdn_fp32: keep the delta rule and the recurrent state's
        path in fp32 inside an fp16 program. head_fp32: keep the vocabulary projection in fp32 inside an fp16 program.
        max_package_bytes: split the layers over several packages chained by the runtime above this (default ~1.4 GB,
        the reported Neural Engine compile limit). quality_gate: default on for checkpoints, off for presets.
        image_sizes: the sizes the vision package encodes ('224,448', the xnnpack recipe's default and syntax);
        vision=False: a text-only bundle from a checkpoint with a tower."""
        import coremltools  # noqa: F401  (the [coreml] extra; fail before any work)

        super().__init__(max_seq_len=max_seq_len, quality_gate=quality_gate)
        if qlinear not in QLINEAR:
            raise UsageError(f"--qlinear {qlinear!r}: not valid for recipe {self.NAME}; valid: {list(QLINEAR)}")
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
        self.qlinear, self.prefill_chunk, self.gdn_layout = qlinear, prefill_chunk, gdn_layout
        self.gdn_fp32, self.head_fp32, self.max_package_bytes = gdn_fp32, head_fp32, max_package_bytes
        self.image_sizes_given = image_sizes is not None
        self.image_sizes = parse_image_sizes(DEFAULT_IMAGE_SIZES if image_sizes is None else image_sizes)
        self.vision = vision

    @classmethod
    def cli_options(cls, args) -> dict:
        """The flags every Core ML recipe shares; the xnnpack-only ones are refused."""
        if args.preset is not None:
            raise UsageError("--preset: the presets are xnnpack recipes; Core ML recipes take --qlinear {fp16,8w,4w}")
        for flag, value in (("--qembedding", args.qembedding), ("--group-size", args.group_size),
                            ("--tied-table", args.tied_table)):
            if value is not None:
                raise UsageError(f"{flag}: not a Core ML flag (the recipe quantizes the embedding with the linears "
                                 "and uses blocks of 32 for 4w)")
        return dict(qlinear=args.qlinear or "fp16", max_seq_len=args.max_seq_len or DEFAULT_MAX_SEQ_LEN,
                    prefill_chunk=args.max_prefill_chunk or DEFAULT_PREFILL_CHUNK,
                    quality_gate=quality_gate_flag(args))

    @classmethod
    def from_cli(cls, args) -> "CoreMLRecipe":
        return cls(**cls.cli_options(args), gdn_layout=args.gdn_layout, head_fp32=args.head_fp32,
                   max_package_bytes=int(args.max_package_mb * 1e6), image_sizes=args.image_sizes,
                   vision=not args.no_vision)

    def describe(self) -> str:
        return (f"  recipe {self.NAME}, qlinear {self.qlinear}, context {self.max_seq_len}, prefill chunk "
                f"{self.prefill_chunk}, delta-net state {self.gdn_layout}"
                + (", head fp32" if self.head_fp32 else "") + (", delta rule fp32" if self.gdn_fp32 else "")
                + (f", image sizes {','.join(f'{h}x{w}' for h, w in self.image_sizes)} (when SOURCE has a vision "
                   "tower)" if self.vision else ", no vision"))

    def full_precision(self) -> bool:
        return self.qlinear == "fp32"

    def prepare(self, job: ExportJob) -> None:
        sources.check_context(self.max_seq_len, job.config)
        job.scratch["vision_config"] = sources.vision_config(job.opened.source_dir) if self.vision else None
        if job.scratch["vision_config"] is not None:
            check_image_sizes(self.image_sizes, self.max_seq_len, job.scratch["vision_config"])
        elif self.vision and self.image_sizes_given:
            warnings.warn(f"SOURCE {job.source} has no vision tower: --image-sizes is ignored (a text-only bundle)")

    def sizes(self, job: ExportJob) -> list[tuple[int, int]]:
        """The exported image sizes, [] for a text-only bundle."""
        return self.image_sizes if job.scratch.get("vision_config") is not None else []

    def stage_load(self, job: ExportJob) -> None:
        job.model = sources.load_model(job.source, max_seq_len=self.max_seq_len, gdn_impl="reference")
        job.n_params = sum(p.numel() for p in job.model.parameters())
        if self.sizes(job):
            import torch

            from qwen_mobile.models.vision import Qwen35VisionModel
            from qwen_mobile.models.vision_preprocess import ImageProcessorConfig

            visual = Qwen35VisionModel.from_pretrained(job.opened.source_dir, dtype=torch.float32)
            job.scratch["visual"] = visual.eval().requires_grad_(False)
            job.scratch["processor"] = ImageProcessorConfig.from_pretrained(job.opened.source_dir, visual.config)
            job.scratch["vision_params"] = sum(p.numel() for p in visual.parameters())
            job.n_params += job.scratch["vision_params"]
        parts = plan_packages(job.model, self.qlinear, self.max_package_bytes)
        job.scratch["parts"], job.scratch["names"] = parts, contract.coreml_package_names(len(parts))
        if len(parts) > 1:
            self.say(f"{len(parts)} packages of layers {parts} (each estimated under "
                     f"{self.max_package_bytes / 1e9:.2f} GB)", job)

    def stage_convert(self, job: ExportJob) -> None:
        from ..coreml.convert import build_package, build_vision_package
        from ..coreml.graph import image_functions, make_decoder

        parts, names = job.scratch["parts"], job.scratch["names"]
        reports = []
        for name, layers in zip(names, parts):
            if len(parts) > 1:
                self.say(f"package {name}: layers [{layers[0]}, {layers[1]})", job)
            extra = (image_functions(job.model, self.gdn_layout, layers, self.prefill_chunk) if self.sizes(job)
                     else ())
            reports.append(build_package(make_decoder(job.model, self.gdn_layout, layers), job.staging / name,
                                         prefill_chunk=self.prefill_chunk, qlinear=self.qlinear,
                                         keep_gdn_fp32=self.gdn_fp32, keep_head_fp32=self.head_fp32,
                                         extra_functions=extra, progress=lambda msg: self.say(msg, job)))
        job.scratch["reports"] = reports
        if self.sizes(job):
            self.say(f"package {contract.COREML_VISION_PACKAGE}: the vision tower", job)
            job.scratch["vision_report"] = build_vision_package(
                job.scratch["visual"], job.scratch["processor"], self.sizes(job),
                job.staging / contract.COREML_VISION_PACKAGE, qlinear=self.qlinear,
                keep_fp32_weights=list(VISION_KEEP_UNQUANTIZED), progress=lambda msg: self.say(msg, job))

    def stage_verify(self, job: ExportJob) -> None:
        from ..coreml.evaluator import MILModel
        from ..coreml.graph import fp16_kv
        from ..coreml.runner import CoreMLRunner, evaluator_call
        from ..verify import compare_with_eager

        self.say("verify with the numpy MIL evaluator", job)
        config, parts = job.config, job.scratch["parts"]
        mils = [MILModel(job.staging / name) for name in job.scratch["names"]]
        chain = []
        for mil, layers in zip(mils, parts):
            check_package_spec(mil, config, self.max_seq_len, self.prefill_chunk, self.gdn_layout, layers=layers,
                               image_functions=bool(self.sizes(job)))
            shapes = state_shapes(config, self.max_seq_len, layers)
            has_io = self.gdn_layout == "io" and shapes["gdn_rec"][0] > 0
            chain.append((evaluator_call(mil), {n: shapes[n] for n in ("gdn_conv", "gdn_rec")} if has_io else {}))
        runner = CoreMLRunner(prefill_chunk=self.prefill_chunk, parts=chain)
        # fp32 is held to the model it implements exactly (fp16 caches); fp16 and quantized builds to the fp32 model.
        reference = fp16_kv(job.model) if self.qlinear == "fp32" else job.model
        job.prompt = verification_prompt(config.vocab_size, job.tokenizer, self.prefill_chunk)
        steps = min(VERIFY_DECODE_STEPS, self.max_seq_len - len(job.prompt))
        metrics = compare_with_eager(runner, reference, job.prompt, steps=steps)
        job.result = self.gate(job, metrics)
        functions = ("prefill", "decode")
        if self.sizes(job):
            functions += tuple(f for f in mils[0].functions if f not in functions)
            self._verify_images(job, runner, reference)
        job.scratch["histograms"] = [{f: {"ops": mil.op_histogram(f)} for f in functions if f in mil.functions}
                                     for mil in mils]

    def _verify_images(self, job: ExportJob, runner, reference) -> None:
        """The image-prompt gate: the test card at the smallest size through the saved vision and text packages
        (CONTRACT.md's five steps, export/verify.compare_image_with_reference) against eager fp32
        Qwen35VisionLanguage on the same reference text model as the text gate, with the text gate's rule."""
        from qwen_mobile.models.vision_export import image_grid
        from qwen_mobile.models.vision_language import Qwen35VisionLanguage, image_token_count
        from qwen_mobile.runtime.images import synthetic_image

        from ..coreml.evaluator import MILModel
        from ..coreml.runner import evaluator_call
        from ..verify import VerificationError, compare_image_with_reference, eager_image_reference, image_prompt

        visual, config = job.scratch["visual"], job.config
        vision_mil = MILModel(job.staging / contract.COREML_VISION_PACKAGE)
        check_vision_spec(vision_mil, self.sizes(job), visual.config, config.hidden_size)
        job.scratch["vision_histogram"] = {f: {"ops": vision_mil.op_histogram(f)} for f in vision_mil.functions}
        runner.vision = evaluator_call(vision_mil)
        h, w = min(self.sizes(job), key=lambda size: (size[0] * size[1], size))
        grid = image_grid(h, w, visual.config)
        prompt = image_prompt(visual.config, image_token_count(grid, visual.config.spatial_merge_size),
                              config.vocab_size, job.tokenizer)
        rgb = synthetic_image(h, w).permute(1, 2, 0).contiguous()  # [3,H,W] -> [H,W,3]
        steps = min(VERIFY_DECODE_STEPS, self.max_seq_len - len(prompt))
        ref = eager_image_reference(Qwen35VisionLanguage(reference, visual), job.scratch["processor"], rgb,
                                    contract.image_method(h, w), prompt, steps)
        metrics = compare_image_with_reference(runner, ref, visual.config.image_token_id)
        image = self.gate(job, metrics)
        job.scratch["image_reference"], job.scratch["image_result"] = ref, image
        if job.result.passed and not image.passed:  # a failed text gate is reported first, by run_export
            raise VerificationError(f"{self.LABEL} image-prompt", image, self.full_precision())

    def gate(self, job: ExportJob, metrics):
        """fp32 is held to FP32_REL_TOL, fp16 and the weight-only recipes to their QUALITY_FLOORS."""
        from ..verify import gate

        floors = {"max_abs_logit_diff": FP32_REL_TOL} if self.qlinear == "fp32" else QUALITY_FLOORS[self.qlinear]
        return gate(metrics, self.qlinear, "none", floors, job.opened.quality_gate)

    def package_io(self, config, layers, tokens, entry: str = "tokens"):
        """Inputs and outputs of one package's function of `tokens` tokens. entry: what the function takes first
        (graph.py): "tokens" (prefill, decode), "embeddings" (prefill_embeddings, decode_embeddings: rope_pos [3,T]),
        "rope" (decode_rope: rope_pos [1]) or "embed" (embed: tokens -> embeds, stateless)."""
        tensor = contract.tensor_spec
        h = config.hidden_size
        if entry == "embed":
            return [tensor("tokens", [1, tokens], "int32")], [tensor("embeds", [1, tokens, h], "float32")]
        shapes = state_shapes(config, self.max_seq_len, layers)
        first, last = layers[0] == 0, layers[1] == config.num_hidden_layers
        if not first:
            head = tensor("hidden", [1, tokens, h], "float32")
        else:
            head = (tensor("embeds", [1, tokens, h], "float32") if entry == "embeddings"
                    else tensor("tokens", [1, tokens], "int32"))
        inputs = [head, tensor("input_pos", [tokens], "int32")]
        if entry == "embeddings":
            inputs.append(tensor("rope_pos", [3, tokens], "int32"))
        elif entry == "rope":
            inputs.append(tensor("rope_pos", [tokens], "int32"))
        outputs = [tensor("logits", [1, 1, config.vocab_size], "float32") if last
                   else tensor("hidden_out", [1, tokens, config.hidden_size], "float32")]
        if self.gdn_layout == "io" and shapes["gdn_rec"][0]:
            inputs += [tensor("conv_in", shapes["gdn_conv"], "float32"), tensor("rec_in", shapes["gdn_rec"], "float32")]
            outputs += [tensor("conv_out", shapes["gdn_conv"], "float32"),
                        tensor("rec_out", shapes["gdn_rec"], "float32")]
        return inputs, outputs

    def method(self, config, parts, method_name, tokens):
        """A bundle method: one package's own I/O, or a split chain's ends (per-package I/O in program.packages)."""
        tensor = contract.tensor_spec
        if len(parts) == 1:
            inputs, outputs = self.package_io(config, parts[0], tokens)
        else:
            inputs = [tensor("tokens", [1, tokens], "int32"), tensor("input_pos", [tokens], "int32")]
            outputs = [tensor("logits", [1, 1, config.vocab_size], "float32")]
        return contract.token_method("prefill" if tokens > 1 else "decode",
                                     function=contract.COREML_FUNCTIONS[method_name], inputs=inputs, outputs=outputs,
                                     min_tokens=tokens, max_tokens=tokens, resets_state_at_position_0=True)

    def package_functions(self, layers, images: bool) -> list[tuple[str, int, str]]:
        """(function, tokens, entry) of one text package, in package order (graph.image_functions)."""
        functions = [("prefill", self.prefill_chunk, "tokens"), ("decode", 1, "tokens")]
        if images:
            names = contract.COREML_IMAGE_FUNCTIONS
            functions += [(names[contract.EMBEDDINGS_PREFILL_METHOD], self.prefill_chunk, "embeddings"),
                          (contract.COREML_EMBEDDINGS_REMAINDER_FUNCTION, 1, "embeddings")]
            if layers[0] == 0:
                functions += [(names[contract.EMBED_METHOD], self.prefill_chunk, "embed"),
                              (names[contract.ROPE_DECODE_METHOD], 1, "rope")]
        return functions

    def image_methods(self, config, parts) -> dict:
        """program.methods entries of the contract's three image-prompt methods, keyed like an XNNPACK bundle's,
        each naming the Core ML function that implements it (a split chain: the ends' I/O, as `method` does)."""
        names, tensor, h = contract.COREML_IMAGE_FUNCTIONS, contract.tensor_spec, config.hidden_size
        chunk, single = self.prefill_chunk, len(parts) == 1
        logits = [tensor("logits", [1, 1, config.vocab_size], "float32")]

        def io(tokens, entry, chain_inputs):
            return self.package_io(config, parts[0], tokens, entry) if single else (chain_inputs, logits)

        embed_in, embed_out = self.package_io(config, parts[0], chunk, "embed")
        prefill_in, prefill_out = io(chunk, "embeddings", [
            tensor("embeds", [1, chunk, h], "float32"), tensor("input_pos", [chunk], "int32"),
            tensor("rope_pos", [3, chunk], "int32")])
        rest_in, rest_out = io(1, "embeddings", [tensor("embeds", [1, 1, h], "float32"),
                                                 tensor("input_pos", [1], "int32"),
                                                 tensor("rope_pos", [3, 1], "int32")])
        rope_in, rope_out = io(1, "rope", [tensor("tokens", [1, 1], "int32"), tensor("input_pos", [1], "int32"),
                                           tensor("rope_pos", [1], "int32")])
        return {
            contract.EMBED_METHOD: {
                "kind": "embed", "function": names[contract.EMBED_METHOD], "inputs": embed_in, "outputs": embed_out,
                "min_tokens": 1, "max_tokens": chunk,
                "padding": f"exactly {chunk} tokens a call: pad a shorter one with any id and keep its first rows"},
            contract.EMBEDDINGS_PREFILL_METHOD: {
                "kind": "prefill_embeddings", "function": names[contract.EMBEDDINGS_PREFILL_METHOD],
                "inputs": prefill_in, "outputs": prefill_out, "min_tokens": chunk, "max_tokens": chunk,
                "resets_state_at_position_0": True,
                "remainder_function": contract.COREML_EMBEDDINGS_REMAINDER_FUNCTION,
                "remainder": {"inputs": rest_in, "outputs": rest_out}},
            contract.ROPE_DECODE_METHOD: {
                "kind": "decode_rope", "function": names[contract.ROPE_DECODE_METHOD], "inputs": rope_in,
                "outputs": rope_out, "min_tokens": 1, "max_tokens": 1, "resets_state_at_position_0": True},
        }

    def vision_sections(self, job: ExportJob, methods: dict) -> dict:
        """The image methods' entries (added to `methods`), the `vision` section and verification.image."""
        from qwen_mobile.models.vision_export import image_grid
        from qwen_mobile.models.vision_language import image_token_count

        config, parts = job.config, job.scratch["parts"]
        visual, processor, report = job.scratch["visual"], job.scratch["processor"], job.scratch["vision_report"]
        vc, tensor, package = visual.config, contract.tensor_spec, contract.COREML_VISION_PACKAGE
        methods.update(self.image_methods(config, parts))
        images = []
        for h, w in self.sizes(job):
            grid = image_grid(h, w, vc)
            tokens = image_token_count(grid, vc.spatial_merge_size)
            method = contract.image_method(h, w)
            methods[method] = {"kind": "encode_image", "package": package, "function": method,
                               "inputs": [tensor("rgb", [h, w, 3], "float32")],
                               "outputs": [tensor("image_embeds", [tokens, config.hidden_size], "float32")]}
            images.append({"method": method, "height": h, "width": w, "grid_thw": list(grid), "tokens": tokens})
        quantized = self.qlinear in ("8w", "4w")
        vision = {
            "image_token_id": vc.image_token_id, "vision_start_token_id": vc.vision_start_token_id,
            "vision_end_token_id": vc.vision_end_token_id, "patch_size": vc.patch_size,
            "spatial_merge_size": vc.spatial_merge_size, "temporal_patch_size": vc.temporal_patch_size,
            # The reader's pixels are bytes; Core ML arrays have no uint8, so the function takes their values as fp32.
            "pixels": {"dtype": "uint8", "layout": "HWC-RGB", "program_dtype": "float32",
                       "rescale_factor": processor.rescale_factor, "image_mean": list(processor.image_mean),
                       "image_std": list(processor.image_std)},
            "images": images,
            "methods": {"embed": contract.EMBED_METHOD, "prefill": contract.EMBEDDINGS_PREFILL_METHOD,
                        "decode": contract.ROPE_DECODE_METHOD},
            "package": {"file": package, "bytes": report.package_bytes, "weight_bytes": report.weight_bytes,
                        "functions": [i["method"] for i in images],
                        "compute_precision": "fp32" if self.qlinear == "fp32" else "fp16",
                        "run": "before the text package(s): its image_embeds replace the image tokens' embeddings"},
            "tower": {"depth": vc.depth, "hidden_size": vc.hidden_size, "num_heads": vc.num_heads,
                      "params": job.scratch["vision_params"]},
            "quantization": {"qlinear": self.qlinear, "group_size": INT4_BLOCK_SIZE if self.qlinear == "4w" else None,
                             "kept_fp32": [f"{name} ({why})" for name, why in VISION_KEEP_UNQUANTIZED.items()]
                             if quantized else []},
        }
        ref = job.scratch["image_reference"]
        image = dict(job.scratch["image_result"].as_dict(), method=ref.method, prompt_tokens=len(ref.prompt),
                     image_tokens=int(sum(t == vc.image_token_id for t in ref.prompt)))
        return {"vision": vision, "image_verification": image}

    def manifest_sections(self, job: ExportJob) -> dict:
        config, parts, names, reports = job.config, job.scratch["parts"], job.scratch["names"], job.scratch["reports"]
        tensor = contract.tensor_spec
        buffers, packages = [], []
        for name, layers, report in zip(names, parts, reports):
            shapes = state_shapes(config, self.max_seq_len, layers)
            if shapes["kv_cache"][0]:
                buffers.append(dict(tensor("kv_cache", shapes["kv_cache"], "float16"), seq_axis=contract.KV_SEQ_AXIS,
                                    storage="coreml_state", package=name))
            if shapes["gdn_rec"][0]:
                dtype = "float16" if self.gdn_layout == "state" else "float32"
                for buf in ("gdn_conv", "gdn_rec"):
                    buffers.append(dict(tensor(buf, shapes[buf], dtype),
                                        seq_axis=None, package=name,
                                        storage="coreml_state" if self.gdn_layout == "state" else "host_io"))
            entry = {"file": name, "layers": list(layers), "bytes": report.package_bytes}
            if len(parts) > 1:
                for function, tokens, kind in self.package_functions(layers, bool(self.sizes(job))):
                    entry[function] = dict(zip(("inputs", "outputs"), self.package_io(config, layers, tokens, kind)))
            packages.append(entry)
        conversion = dict(reports[0].__dict__) if len(reports) == 1 else {
            "package_bytes": sum(r.package_bytes for r in reports),
            "weight_bytes": sum(r.weight_bytes for r in reports),
            "functions": reports[0].functions, "quantize_seconds": sum(r.quantize_seconds for r in reports),
            "merge_seconds": sum(r.merge_seconds for r in reports), "packages": [r.__dict__ for r in reports]}
        for name, report in zip(names, reports):
            if report.package_bytes > ANE_PACKAGE_LIMIT_BYTES:
                warnings.warn(f"{name} is {report.package_bytes / 1e9:.2f} GB, above the ~1.4 GB Neural Engine "
                              "compile limit: it will run on GPU/CPU (lower --max-package-bytes)")
        histograms = job.scratch["histograms"]
        methods = {m: self.method(config, parts, m, self.prefill_chunk if m == contract.PREFILL_METHOD else 1)
                   for m in contract.TOKEN_METHODS}
        vision = self.vision_sections(job, methods) if self.sizes(job) else {}
        graph = dict(zip(names, histograms)) if len(parts) > 1 else histograms[0]
        extra_program, extra_verification, extra_export = {}, {}, {}
        if vision:
            graph = dict(graph, **{contract.COREML_VISION_PACKAGE: job.scratch["vision_histogram"]}) \
                if len(parts) > 1 else dict(graph, **job.scratch["vision_histogram"])
            extra_program["image_prefill_rule"] = (
                f"full {self.prefill_chunk}-token chunks of embeddings through prefill_embeddings, the rest through "
                f"{contract.COREML_EMBEDDINGS_REMAINDER_FUNCTION}; generated tokens through decode_rope")
            extra_verification["image"] = vision.pop("image_verification")
            extra_export["vision_conversion"] = dict(job.scratch["vision_report"].__dict__)
        return {
            "recipe": {"name": self.NAME, "backend": "coreml", "preset": None, "qlinear": self.qlinear,
                       # linear_quantize_weights quantizes the embedding table with the linears.
                       "qembedding": self.qlinear if self.qlinear in ("8w", "4w") else "none",
                       # coremltools' const deduplication stores a tied table once per package (nano fp32: 38.8 MB of
                       # weights for 9.7 M parameters); a split model has it in its first and last packages.
                       "group_size": INT4_BLOCK_SIZE,
                       "tied_table_copies": 2 if len(parts) > 1 and config.tie_word_embeddings else 1,
                       "gdn_layout": self.gdn_layout, "gdn_fp32": self.gdn_fp32, "head_fp32": self.head_fp32,
                       "compute_precision": "fp32" if self.qlinear == "fp32" else "fp16",
                       "minimum_deployment_target": MIN_DEPLOYMENT},
            "program": {
                "file": names[0], "op_namespace": contract.OP_NAMESPACE, "kernel_namespaces": [],
                # Keyed like every bundle's methods (the .pte method names); `function` is the Core ML function.
                "methods": methods,
                "packages": packages,
                "chain": ("one package" if len(parts) == 1 else
                          "run the packages in order: the first takes tokens, each next one the previous hidden_out, "
                          "the last returns logits; every package has its own states"),
                "graph": graph,
                "prefill_rule": f"full {self.prefill_chunk}-token chunks through prefill, the rest through decode",
                **extra_program,
            },
            "state": {"max_seq_len": self.max_seq_len, "max_batch_size": 1, "shared_between_methods": True,
                      "reset": "a call whose input_pos[0] == 0 zeroes every state first (in-graph)",
                      "buffers": buffers},
            "verification": verification_record(
                job, evaluator="numpy MIL evaluator (Linux); MLModel.predict not run",
                reference="eager fp32 with fp16 attention caches" if self.qlinear == "fp32" else "eager fp32",
                **extra_verification),
            "export": {"conversion": conversion, "max_package_bytes": self.max_package_bytes, **extra_export},
            **vision,
        }
