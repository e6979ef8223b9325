"""`--recipe xnnpack`: an ExecuTorch `.pte` for Android and iOS CPUs, XNNPACK delegates plus our qwen35 kernels.

Methods `forward` (prefill, dynamic T), `decode_token` (T = 1), `state_read` and `state_write` over one set of state
buffers (export/lowering.py). From a checkpoint with a vision tower also `embed_tokens`, `prefill_embeddings`,
`decode_token_rope` and one `encode_image_<H>x<W>` per `--image-sizes` entry, and the manifest's `vision` section
(runtime/CONTRACT.md, "Images"; `--no-vision` leaves them out). Settings come from a reviewed preset
(export/presets/xnnpack-*.yaml) and the flags that override it; the preset also holds the quality gate's floors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qwen_mobile.runtime import contract
from qwen_mobile.runtime.errors import UsageError

from .. import source as sources
from .base import ExportJob, Recipe, quality_gate_flag, verification_record

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
# Linear schemes this recipe lowers. Weight-only linears (8w, 4w) run our qwen35::linear_wq kernel outside the
# XNNPACK delegates (torchao's dequantize_affine has no out variant in executorch 1.5.1).
QLINEAR = ("fp32", "8da4w", "8da8w", "8w", "4w")
DEFAULT_PRESET = "xnnpack-8da4w"
# The gate's fp32 reference upcasts a bf16-stored model whole when that costs less than this (0.8B: 3.0 GB, 2B: about
# 7.5 GB), else one layer per step, which bounds memory but converts every weight again at each of its 33 steps.
REFERENCE_UPCAST_WHOLE_BELOW = 4 << 30
DEFAULT_IMAGE_SIZES = "224,448"
# Tower linears that stay fp32 whatever --qlinear says (export/README.md, "Images", has the measurements).
VISION_KEEP_FP32 = {
    "patch_embed": "the pixels' projection: 1 % of the tower's weights, and the weight-only linears cannot take it "
                   "(Qwen35VisionPatchEmbed casts its input to the weight's dtype)",
}


def parse_image_sizes(value) -> list[tuple[int, int]]:
    """--image-sizes: '224,448' or '224x336,448' (HxW), or a list of ints, (h, w) pairs or such strings -> [(h, w)]
    in the given order, repeats dropped."""
    from qwen_mobile.runtime.images import parse_size

    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    sizes = []
    for item in items:
        try:
            size = (tuple(int(v) for v in item) if isinstance(item, (tuple, list)) else
                    (int(item), int(item)) if isinstance(item, int) else parse_size(item, "--image-sizes"))
        except (TypeError, ValueError) as err:
            raise UsageError(str(err) if "--image-sizes" in str(err) else
                             f"--image-sizes {value!r}: expected a comma list of S or HxW, e.g. 224,448") from None
        if len(size) != 2 or min(size) < 1:
            raise UsageError(f"--image-sizes {value!r}: {item!r} is not a positive size (S or HxW)")
        if size not in sizes:
            sizes.append(size)
    if not sizes:
        raise UsageError(f"--image-sizes {value!r}: no size given (S or HxW, comma-separated)")
    return sizes


def available_export_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_export_preset(name: str) -> dict:
    import yaml

    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UsageError(f"--preset {name!r}: unknown; available: {available_export_presets()}")
    return yaml.safe_load(path.read_text())


@dataclass
class ExportSettings:
    recipe: str = "xnnpack"
    qlinear: str = "8da4w"
    qembedding: str = "4w"
    group_size: int = 32
    tied_table: str = "once"
    max_seq_len: int = 1024
    max_prefill_chunk: int = 128
    verify: dict = field(default_factory=dict)
    image_sizes: list = field(default_factory=lambda: parse_image_sizes(DEFAULT_IMAGE_SIZES))  # [(h, w)]
    vision: bool = True  # export the tower's methods when SOURCE has one (--no-vision: False)
    preset: str | None = None
    origin: dict = field(default_factory=dict)  # field -> where its value came from, for the printed recipe

    SHOWN = ("recipe", "qlinear", "qembedding", "group_size", "tied_table", "max_seq_len", "max_prefill_chunk",
             "image_sizes")

    @classmethod
    def resolve(cls, preset: str | None = DEFAULT_PRESET, **overrides) -> "ExportSettings":
        """Preset values, then every override that is not None (the CLI's explicit flags).

        preset None with a --qlinear that names a reviewed preset (xnnpack-<qlinear>) starts from that preset, so
        `--qlinear fp32` alone means full precision rather than fp32 linears beside the default's 4-bit embedding.
        """
        from ..quantize import GROUP_SIZES, QEMBEDDING, TIED_TABLE

        explicit = {k: v for k, v in overrides.items() if v is not None}
        chosen_by = None
        if preset is None:
            matching = f"{explicit.get('recipe', 'xnnpack')}-{explicit.get('qlinear')}"
            preset, chosen_by = ((matching, f"--qlinear {explicit['qlinear']}")
                                 if matching in available_export_presets() else (DEFAULT_PRESET, "default"))
        base = load_export_preset(preset)
        suffix = {None: "", "default": ", the default"}.get(chosen_by, f", chosen by {chosen_by}")
        preset_origin = f"preset {preset}{suffix}"
        origin = {k: preset_origin for k in base} | {k: "--" + k.replace("_", "-") for k in explicit}
        if "image_sizes" in explicit:
            explicit["image_sizes"] = parse_image_sizes(explicit["image_sizes"])
        if explicit.get("vision") is False:
            origin["image_sizes"] = "--no-vision"
        base.update(explicit)
        settings = cls(**base, preset=preset, origin=origin)
        if (settings.qlinear == "fp32" and "qlinear" in explicit and "qembedding" not in explicit
                and settings.qembedding != "none"):
            raise UsageError(f"--qlinear fp32 with --preset {preset} keeps its {settings.qembedding} embedding: for a "
                             "full-precision bundle use --preset xnnpack-fp32 (or drop --preset); to keep the "
                             f"quantized embedding say so with --qembedding {settings.qembedding}")
        if settings.recipe != XnnpackRecipe.NAME:
            raise UsageError(f"--recipe {settings.recipe!r}: the presets are xnnpack recipes")
        for flag, value, valid in (("--qlinear", settings.qlinear, QLINEAR),
                                   ("--qembedding", settings.qembedding, QEMBEDDING),
                                   ("--group-size", settings.group_size, GROUP_SIZES),
                                   ("--tied-table", settings.tied_table, TIED_TABLE)):
            if value not in valid:
                raise UsageError(f"{flag} {value!r}: not valid for recipe {settings.recipe}; valid: {list(valid)}")
        if settings.tied_table == "twice" and settings.qlinear in ("8w", "4w"):
            raise UsageError(f"--tied-table twice: --qlinear {settings.qlinear} runs lm_head on our weight-only "
                             "kernel, which reads the embedding's table; only 8da4w/8da8w can keep a second copy in "
                             "XNNPACK")
        if settings.max_prefill_chunk < 2:
            raise UsageError("--max-prefill-chunk must be at least 2")
        if settings.max_prefill_chunk > settings.max_seq_len:
            raise UsageError(f"--max-prefill-chunk {settings.max_prefill_chunk} exceeds --max-seq-len "
                             f"{settings.max_seq_len}")
        return settings

    def describe(self) -> str:
        """Every quantization and shape setting with where it came from, printed before an export starts."""
        def shown(key: str) -> str:
            if key != "image_sizes":
                return str(getattr(self, key))
            if not self.vision:
                return "none"
            return ",".join(f"{h}x{w}" for h, w in self.image_sizes)

        origins = dict(self.origin)
        origins.setdefault("image_sizes", "built-in default; used when SOURCE has a vision tower")
        return "\n".join(f"  {k:<18} {shown(k):<8} ({origins.get(k, 'built-in default')})" for k in self.SHOWN)


class XnnpackRecipe(Recipe):
    NAME = "xnnpack"
    DESCRIPTION = ("ExecuTorch .pte for Android/iOS CPU: XNNPACK delegates, our qwen35 kernels for the delta rule "
                   "and weight-only linears")
    LABEL = "export"
    STAGES = ("load", "reference", "quantize", "export", "lower", "write", "verify")
    STAGED_FROM = "write"

    def __init__(self, settings: ExportSettings, *, quality_gate: bool | None = None):
        super().__init__(max_seq_len=settings.max_seq_len, quality_gate=quality_gate)
        self.settings = settings

    @classmethod
    def from_options(cls, *, preset: str | None = DEFAULT_PRESET, quality_gate: bool | None = None,
                     **overrides) -> "XnnpackRecipe":
        """preset and flag overrides (None: not given) -> the recipe; bad combinations are UsageErrors."""
        return cls(ExportSettings.resolve(preset, **overrides), quality_gate=quality_gate)

    @classmethod
    def from_cli(cls, args) -> "XnnpackRecipe":
        for flag, given in (("--gdn-layout", args.gdn_layout != "io"), ("--head-fp32", args.head_fp32)):
            if given:
                raise UsageError(f"{flag} applies to --recipe coreml only")
        return cls.from_options(preset=args.preset, quality_gate=quality_gate_flag(args), recipe=args.recipe,
                                qlinear=args.qlinear, qembedding=args.qembedding, group_size=args.group_size,
                                tied_table=args.tied_table, max_seq_len=args.max_seq_len,
                                max_prefill_chunk=args.max_prefill_chunk, image_sizes=args.image_sizes,
                                vision=False if args.no_vision else None)

    def describe(self) -> str:
        return self.settings.describe()

    def full_precision(self) -> bool:
        return self.settings.qlinear == "fp32" and self.settings.qembedding == "none"

    def prepare(self, job: ExportJob) -> None:
        import warnings

        settings, config = self.settings, job.config
        if settings.max_seq_len > config.max_position_embeddings:
            if settings.origin.get("max_seq_len") == "--max-seq-len":  # the user asked for it: refuse
                sources.check_context(settings.max_seq_len, config)
            # Only the preset's default is too long for this model: use the model's whole context instead.
            warnings.warn(f"the preset's max_seq_len {settings.max_seq_len} exceeds {job.source}'s "
                          f"max_position_embeddings; using {config.max_position_embeddings}")
            settings.max_seq_len = config.max_position_embeddings
            settings.max_prefill_chunk = min(settings.max_prefill_chunk, settings.max_seq_len)
        from ..lowering_shortcuts import parallel_preprocess

        parallel_preprocess.reset_memory_records()
        job.scratch["vision_config"] = (sources.vision_config(job.opened.source_dir) if settings.vision else None)
        if job.scratch["vision_config"] is not None:
            self._check_image_sizes(job.scratch["vision_config"])
        elif settings.vision and settings.origin.get("image_sizes") == "--image-sizes":
            warnings.warn(f"SOURCE {job.source} has no vision tower: --image-sizes is ignored (a text-only bundle)")

    def _check_image_sizes(self, vision) -> None:
        """Every size is a whole number of merged tokens, and the gate's prompt around the smallest fits the context."""
        from qwen_mobile.models.vision_export import image_grid

        s = self.settings
        factor = vision.patch_size * vision.spatial_merge_size
        for h, w in s.image_sizes:
            try:
                image_grid(h, w, vision)
            except ValueError:
                raise UsageError(f"--image-sizes {h}x{w}: both sides must be positive multiples of {factor} "
                                 f"(patch_size {vision.patch_size} x spatial_merge_size {vision.spatial_merge_size})"
                                 ) from None
        for h, w in s.image_sizes:
            if h * w // factor ** 2 + 2 > s.max_seq_len:
                raise UsageError(f"--image-sizes {h}x{w}: one image takes {h * w // factor ** 2} tokens (plus its two "
                                 f"markers), more than the context, --max-seq-len {s.max_seq_len}")
        smallest = min(h * w for h, w in s.image_sizes) // factor ** 2
        if smallest + 32 > s.max_seq_len:
            raise UsageError(f"--image-sizes: the smallest size takes {smallest} tokens, which with the gate's "
                             f"question does not fit --max-seq-len {s.max_seq_len}")

    def image_sizes(self, job: ExportJob) -> list[tuple[int, int]]:
        """The exported sizes, [] for a bundle without image methods."""
        return self.settings.image_sizes if job.scratch.get("vision_config") is not None else []

    def stage_load(self, job: ExportJob) -> None:
        # bf16-stored tensors (the releases' format) stay bf16 until each is quantized or exported: bf16 -> fp32 is
        # exact, and the model never exists in fp32 whole (4B: 8.4 GB instead of 16.8 GB).
        job.model = sources.load_model(job.source, max_seq_len=self.settings.max_seq_len, gdn_impl="op",
                                       keep_bf16=True)
        job.n_params = sum(p.numel() for p in job.model.parameters())
        job.scratch["loaded_dtypes"] = sorted({sources.dtype_name(p) for p in job.model.parameters()})
        if self.image_sizes(job):
            import torch

            from qwen_mobile.models.vision import Qwen35VisionModel
            from qwen_mobile.models.vision_preprocess import ImageProcessorConfig

            # fp32 whole: the tower is small beside the text model (0.8B: 100 M parameters, 0.4 GB).
            visual = Qwen35VisionModel.from_pretrained(job.opened.source_dir, dtype=torch.float32)
            job.scratch["visual"] = visual.eval().requires_grad_(False)
            job.scratch["processor"] = ImageProcessorConfig.from_pretrained(job.opened.source_dir, visual.config)
            job.scratch["vision_params"] = sum(p.numel() for p in visual.parameters())
            job.n_params += job.scratch["vision_params"]

    def stage_reference(self, job: ExportJob) -> None:
        from ..transforms import fp32_compute

        from ..verify import eager_reference, fixed_prompt

        # Eager fp32's answers for the gate, taken now: quantization then rewrites this same model in place, so no
        # fp32 copy is held through lowering (peak RSS; a 0.8B model is 3 GB in fp32).
        job.prompt = fixed_prompt(job.config.vocab_size, job.tokenizer)
        with fp32_compute(job.model, upcast_whole_below=REFERENCE_UPCAST_WHOLE_BELOW):
            job.scratch["reference"] = eager_reference(job.model, job.prompt,
                                                       steps=min(32, self.settings.max_seq_len - len(job.prompt)))
            if self.image_sizes(job):
                job.scratch["image_reference"] = self._image_reference(job)

    def _image_reference(self, job: ExportJob):
        """Eager fp32 on the gate's image prompt: the test card at the smallest exported size."""
        from qwen_mobile.models.vision_export import image_grid
        from qwen_mobile.models.vision_language import Qwen35VisionLanguage, image_token_count
        from qwen_mobile.runtime.images import synthetic_image

        from ..verify import eager_image_reference, image_prompt

        visual = job.scratch["visual"]
        h, w = min(self.settings.image_sizes, key=lambda size: (size[0] * size[1], size))
        grid = image_grid(h, w, visual.config)
        prompt = image_prompt(visual.config, image_token_count(grid, visual.config.spatial_merge_size),
                              job.config.vocab_size, job.tokenizer)
        rgb = synthetic_image(h, w).permute(1, 2, 0).contiguous()  # [3,H,W] -> [H,W,3]
        steps = min(32, self.settings.max_seq_len - len(prompt))
        return eager_image_reference(Qwen35VisionLanguage(job.model, visual), job.scratch["processor"], rgb,
                                     contract.image_method(h, w), prompt, steps)

    def stage_quantize(self, job: ExportJob) -> None:
        from ..quantize import quantize_model
        from ..transforms import fuse_projections

        s = self.settings
        fuse_projections(job.model)  # exact; fewer linears to quantize, lower and run (transforms/fuse.py)
        job.scratch["quantization"] = quantize_model(job.model, s.qlinear, s.qembedding, s.group_size, s.tied_table)
        if self.image_sizes(job):
            job.scratch["vision_quantization"] = quantize_model(job.scratch["visual"], s.qlinear, "none",
                                                                s.group_size, keep=VISION_KEEP_FP32)

    def stage_export(self, job: ExportJob) -> None:
        from ..lowering import export_methods
        from ..quantize import check_weight_only_nodes
        from ..verify import op_nodes_per_method

        from ..lowering import export_image_methods

        sizes = self.image_sizes(job)
        programs = export_methods(job.model, self.settings.max_prefill_chunk, image_text=bool(sizes))
        op_counts = op_nodes_per_method(programs)
        expected = job.config.num_linear_layers
        model_methods = contract.TOKEN_METHODS + ((contract.EMBEDDINGS_PREFILL_METHOD, contract.ROPE_DECODE_METHOD)
                                                  if sizes else ())
        for method in model_methods:
            if op_counts[method] != expected:
                raise RuntimeError(f"export: method '{method}' has {op_counts[method]} qwen35.gated_delta_rule nodes, "
                                   f"expected {expected} (one per delta-net layer); refusing to ship a graph without "
                                   "our kernel")
        # Raises if a weight-only module lost its op. The image-prompt methods run part of the model each:
        # (runs the linears, runs the embedding).
        parts = {m: (True, True) for m in contract.TOKEN_METHODS}
        if sizes:
            parts |= {contract.EMBED_METHOD: (False, True), contract.EMBEDDINGS_PREFILL_METHOD: (True, False),
                      contract.ROPE_DECODE_METHOD: (True, True)}
        check_weight_only_nodes(programs, job.scratch["quantization"], parts)
        if sizes:
            images = export_image_methods(job.scratch["visual"], sizes, job.scratch["processor"])
            check_weight_only_nodes(images, job.scratch["vision_quantization"], list(images))
            programs |= images
        job.scratch["programs"] = programs

    def program_metadata(self, job: ExportJob) -> dict:
        """The program's constant methods, as ExecuTorch's LLM runners read them."""
        config = job.config
        metadata = {
            "get_max_seq_len": self.settings.max_prefill_chunk, "get_max_context_len": self.settings.max_seq_len,
            "get_vocab_size": config.vocab_size, "get_eos_ids": sources.stop_ids(config, job.tokenizer),
            "use_kv_cache": True, "use_sdpa_with_kv_cache": False, "enable_dynamic_shape": True,
            "get_n_layers": config.num_hidden_layers,
        }
        if config.bos_token_id is not None:
            metadata["get_bos_id"] = config.bos_token_id
        return metadata

    def stage_lower(self, job: ExportJob) -> None:
        from ..lowering import lower_to_executorch, program_op_namespaces

        job.scratch["metadata"] = self.program_metadata(job)
        et, job.scratch["graph"] = lower_to_executorch(job.scratch.pop("programs"), job.scratch["metadata"])
        job.scratch["namespaces"] = program_op_namespaces(et)
        job.scratch["et"] = et  # the programs' graphs and constant copies are gone; the bytes to write are here

    def stage_write(self, job: ExportJob) -> None:
        (job.staging / contract.PROGRAM).write_bytes(job.scratch.pop("et").buffer)

    def stage_verify(self, job: ExportJob) -> None:
        from qwen_mobile.runtime.program import BundleProgram

        from ..verify import compare_with_reference, gate

        s = self.settings
        program = BundleProgram(job.staging / contract.PROGRAM, max_prefill_tokens=s.max_prefill_chunk,
                                kernel_namespaces=job.scratch["namespaces"])
        metrics = compare_with_reference(program, job.scratch["reference"])
        job.result = gate(metrics, s.qlinear, s.qembedding, s.verify, job.opened.quality_gate)
        if self.image_sizes(job):
            from ..verify import VerificationError, compare_image_with_reference

            image_metrics = compare_image_with_reference(program, job.scratch["image_reference"],
                                                         job.scratch["visual"].config.image_token_id)
            image = gate(image_metrics, s.qlinear, s.qembedding, s.verify, job.opened.quality_gate)
            job.scratch["image_result"] = image
            if job.result.passed and not image.passed:  # a failed text gate is reported first, by run_export
                raise VerificationError(f"{self.LABEL} image-prompt", image, self.full_precision())
        del program

    def thinking_default(self, job: ExportJob) -> bool | None:
        from qwen_mobile.runtime.chat import thinking_default

        return thinking_default(sources.size_name(job.config), sources.chat_template(job.opened.source_dir))

    def manifest_sections(self, job: ExportJob) -> dict:
        from ..lowering import state_buffers

        s, vocab, qreport = self.settings, job.config.vocab_size, job.scratch["quantization"]
        tensor = contract.tensor_spec
        state_specs = [tensor(n, b.shape, sources.dtype_name(b)) for n, b in state_buffers(job.model)]
        logits = [tensor("logits", [1, 1, vocab], "float32")]
        program_methods = {
            contract.PREFILL_METHOD: contract.token_method(
                "prefill", inputs=[tensor("tokens", [1, "T"], "int64"), tensor("input_pos", ["T"], "int64")],
                outputs=logits, min_tokens=1, max_tokens=s.max_prefill_chunk,
                resets_state_at_position_0=True),
            contract.DECODE_METHOD: contract.token_method(
                "decode", inputs=[tensor("tokens", [1, 1], "int64"), tensor("input_pos", [1], "int64")],
                outputs=logits, min_tokens=1, max_tokens=1, resets_state_at_position_0=False),
            contract.STATE_READ_METHOD: {"kind": "state_read", "inputs": [], "outputs": state_specs},
            contract.STATE_WRITE_METHOD: {"kind": "state_write", "inputs": state_specs,
                                          "outputs": [tensor("zero", [1], "float32")]},
        }
        vision = self._vision_sections(job, program_methods)  # adds the image methods to program_methods
        return {
            "recipe": {"name": s.recipe, "backend": "xnnpack", "preset": s.preset, "qlinear": s.qlinear,
                       "qembedding": s.qembedding, "group_size": s.group_size,
                       "tied_table_copies": qreport.tied_table_copies, "head": qreport.head},
            "program": {
                "file": contract.PROGRAM, "op_namespace": contract.OP_NAMESPACE,
                "kernel_namespaces": job.scratch["namespaces"],
                "methods": program_methods,
                "metadata": job.scratch["metadata"],
                "graph": job.scratch["graph"],
            },
            "state": {"max_seq_len": s.max_seq_len, "max_batch_size": 1, "shared_between_methods": True,
                      "reset": "a forward call whose input_pos[0] == 0 zeroes every buffer first",
                      "buffers": [dict(spec, seq_axis=contract.seq_axis(spec["name"])) for spec in state_specs]},
            "verification": verification_record(job, **self._image_verification(job)),
            "sample_prompt": {"ids": job.prompt,
                              "text": job.tokenizer.decode(job.prompt) if job.tokenizer is not None else None},
            "export": {**_memory_record(), "loaded_dtypes": job.scratch["loaded_dtypes"],
                       # kept_linears only when some are (the text model keeps none): text manifests stay as they were
                       "quantization": {k: v for k, v in qreport.__dict__.items() if k != "kept_linears" or v}},
            **vision,
        }

    def _image_verification(self, job: ExportJob) -> dict:
        """verification.image: the image-prompt gate's numbers (the text gate's kinds), for bundles with images."""
        if "image_result" not in job.scratch:
            return {}
        ref = job.scratch["image_reference"]
        return {"image": dict(job.scratch["image_result"].as_dict(), method=ref.method, prompt_tokens=len(ref.prompt),
                              image_tokens=int(sum(t == job.scratch["visual"].config.image_token_id
                                                   for t in ref.prompt)))}

    def _vision_sections(self, job: ExportJob, methods: dict) -> dict:
        """The image methods' manifest entries (added to `methods`) and the `vision` section; {} without images."""
        from qwen_mobile.models.vision_export import image_grid
        from qwen_mobile.models.vision_language import image_token_count

        sizes = self.image_sizes(job)
        if not sizes:
            return {}
        s, tensor = self.settings, contract.tensor_spec
        visual, processor = job.scratch["visual"], job.scratch["processor"]
        vc, hidden = visual.config, job.config.hidden_size
        logits = [tensor("logits", [1, 1, job.config.vocab_size], "float32")]
        methods[contract.EMBED_METHOD] = {
            "kind": "embed", "inputs": [tensor("tokens", [1, "T"], "int64")],
            "outputs": [tensor("embeds", [1, "T", hidden], "float32")], "min_tokens": 1,
            "max_tokens": s.max_prefill_chunk}
        methods[contract.EMBEDDINGS_PREFILL_METHOD] = {
            "kind": "prefill_embeddings",
            "inputs": [tensor("embeds", [1, "T", hidden], "float32"), tensor("input_pos", ["T"], "int64"),
                       tensor("rope_pos", [3, "T"], "int64")],
            "outputs": logits, "min_tokens": 1, "max_tokens": s.max_prefill_chunk, "resets_state_at_position_0": True}
        methods[contract.ROPE_DECODE_METHOD] = {
            "kind": "decode_rope",
            "inputs": [tensor("tokens", [1, 1], "int64"), tensor("input_pos", [1], "int64"),
                       tensor("rope_pos", [1], "int64")],
            "outputs": logits, "min_tokens": 1, "max_tokens": 1, "resets_state_at_position_0": False}
        images = []
        for h, w in sizes:
            grid = image_grid(h, w, vc)
            tokens = image_token_count(grid, vc.spatial_merge_size)
            methods[contract.image_method(h, w)] = {
                "kind": "encode_image", "inputs": [tensor("rgb", [h, w, 3], "uint8")],
                "outputs": [tensor("image_embeds", [tokens, hidden], "float32")]}
            images.append({"method": contract.image_method(h, w), "height": h, "width": w, "grid_thw": list(grid),
                           "tokens": tokens})
        vq = job.scratch["vision_quantization"]
        return {"vision": {
            "image_token_id": vc.image_token_id, "vision_start_token_id": vc.vision_start_token_id,
            "vision_end_token_id": vc.vision_end_token_id, "patch_size": vc.patch_size,
            "spatial_merge_size": vc.spatial_merge_size, "temporal_patch_size": vc.temporal_patch_size,
            "pixels": {"dtype": "uint8", "layout": "HWC-RGB", "rescale_factor": processor.rescale_factor,
                       "image_mean": list(processor.image_mean), "image_std": list(processor.image_std)},
            "images": images,
            "methods": {"embed": contract.EMBED_METHOD, "prefill": contract.EMBEDDINGS_PREFILL_METHOD,
                        "decode": contract.ROPE_DECODE_METHOD},
            "tower": {"depth": vc.depth, "hidden_size": vc.hidden_size, "num_heads": vc.num_heads,
                      "params": job.scratch["vision_params"]},
            "quantization": {"qlinear": vq.qlinear, "group_size": vq.group_size,
                             "quantized_linears": vq.quantized_linears, "kept_fp32": vq.kept_linears,
                             "skipped_linears": vq.skipped_linears},
        }}


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_record() -> dict:
    """The export's memory figures for the manifest (export/README.md, "Manifest").

    `peak_rss_bytes` is this process's ru_maxrss. The forked XNNPACK worker (lowering_shortcuts/parallel_preprocess.py)
    overlaps it only while partitions are preprocessed: `worker_peak_rss_bytes` is its ru_maxrss and
    `pair_peak_pss_bytes` the highest sampled PSS sum of the two while it ran. `peak_memory_bytes`, the larger of
    this process's peak and that sum, is the export's peak use (a sampled lower bound, tight to the sampling
    interval); exporter + worker RSS is an upper bound that counts the pages they share after fork twice.
    """
    from ..lowering_shortcuts import parallel_preprocess

    own = _peak_rss_bytes()
    pair = parallel_preprocess.last_pair_peak_pss_bytes
    return {"peak_rss_bytes": own, "worker_peak_rss_bytes": parallel_preprocess.last_worker_peak_rss_bytes,
            "pair_peak_pss_bytes": pair, "peak_memory_bytes": max(own, pair)}
