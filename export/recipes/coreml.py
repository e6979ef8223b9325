"""`--recipe coreml`: a stateful multifunction `.mlpackage` (iOS 18+), verified on Linux by the numpy MIL evaluator.

The bundle holds `model.mlpackage` (or `model_0.mlpackage`, ... when split) with two functions sharing weights and
states: "prefill" (exactly `prefill_chunk` tokens, chunked delta rule) and "decode" (one token). The attention caches
of all layers are one fp16 Core ML state; the delta-net state is fp32 input/output (`gdn_layout="io"`, the default,
export/coreml/README.md) or two more fp16 states (`"state"`). Before the bundle appears, the saved package is run by
the numpy MIL evaluator against eager torch and must pass the gate for `qlinear`.
"""

from __future__ import annotations

import warnings

from qwen_mobile.runtime import contract
from qwen_mobile.runtime.errors import UsageError

from .. import source as sources
from ..coreml.convert import ANE_PACKAGE_LIMIT_BYTES, INT4_BLOCK_SIZE, MIN_DEPLOYMENT, QLINEAR
from ..coreml.graph import GDN_LAYOUTS, state_shapes
from ..coreml.plan import (DEFAULT_MAX_SEQ_LEN, DEFAULT_PREFILL_CHUNK, FP32_REL_TOL, QUALITY_FLOORS,
                           VERIFY_DECODE_STEPS, check_package_spec, plan_packages, verification_prompt)
from .base import ExportJob, Recipe, quality_gate_flag, verification_record


class CoreMLRecipe(Recipe):
    NAME = "coreml"
    DESCRIPTION = "stateful multifunction .mlpackage for iOS 18+ (Core ML: Neural Engine, GPU or CPU)"
    LABEL = "Core ML"
    STAGES = ("load", "convert", "verify")
    STAGED_FROM = "convert"

    def __init__(self, *, qlinear: str = "fp16", max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, gdn_layout: str = "io", gdn_fp32: bool = False,
                 head_fp32: bool = False, max_package_bytes: int = ANE_PACKAGE_LIMIT_BYTES,
                 quality_gate: bool | None = None):
        """qlinear: "fp16" (fp16 weights and compute), "8w" (int8 per channel), "4w" (int4, blocks of 32), or "fp32"
        (fp32 compute; for verification, not for phones). gdn_fp32: keep the delta rule and the recurrent state's
        path in fp32 inside an fp16 program. head_fp32: keep the vocabulary projection in fp32 inside an fp16 program.
        max_package_bytes: split the layers over several packages chained by the runtime above this (default ~1.4 GB,
        the reported Neural Engine compile limit). quality_gate: default on for checkpoints, off for presets."""
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
                   max_package_bytes=int(args.max_package_mb * 1e6))

    def describe(self) -> str:
        return (f"  recipe {self.NAME}, qlinear {self.qlinear}, context {self.max_seq_len}, prefill chunk "
                f"{self.prefill_chunk}, delta-net state {self.gdn_layout}"
                + (", head fp32" if self.head_fp32 else "") + (", delta rule fp32" if self.gdn_fp32 else ""))

    def full_precision(self) -> bool:
        return self.qlinear == "fp32"

    def prepare(self, job: ExportJob) -> None:
        sources.check_context(self.max_seq_len, job.config)

    def stage_load(self, job: ExportJob) -> None:
        job.model = sources.load_model(job.source, max_seq_len=self.max_seq_len, gdn_impl="reference")
        job.n_params = sum(p.numel() for p in job.model.parameters())
        parts = plan_packages(job.model, self.qlinear, self.max_package_bytes)
        job.scratch["parts"], job.scratch["names"] = parts, contract.coreml_package_names(len(parts))
        if len(parts) > 1:
            self.say(f"{len(parts)} packages of layers {parts} (each estimated under "
                     f"{self.max_package_bytes / 1e9:.2f} GB)", job)

    def stage_convert(self, job: ExportJob) -> None:
        from ..coreml.convert import build_package
        from ..coreml.graph import make_decoder

        parts, names = job.scratch["parts"], job.scratch["names"]
        reports = []
        for name, layers in zip(names, parts):
            if len(parts) > 1:
                self.say(f"package {name}: layers [{layers[0]}, {layers[1]})", job)
            reports.append(build_package(make_decoder(job.model, self.gdn_layout, layers), job.staging / name,
                                         prefill_chunk=self.prefill_chunk, qlinear=self.qlinear,
                                         keep_gdn_fp32=self.gdn_fp32, keep_head_fp32=self.head_fp32,
                                         progress=lambda msg: self.say(msg, job)))
        job.scratch["reports"] = reports

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
            check_package_spec(mil, config, self.max_seq_len, self.prefill_chunk, self.gdn_layout, layers=layers)
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
        job.scratch["histograms"] = [{f: {"ops": mil.op_histogram(f)} for f in ("prefill", "decode")} for mil in mils]

    def gate(self, job: ExportJob, metrics):
        """fp32 is held to FP32_REL_TOL, fp16 and the weight-only recipes to their QUALITY_FLOORS."""
        from ..verify import gate

        floors = {"max_abs_logit_diff": FP32_REL_TOL} if self.qlinear == "fp32" else QUALITY_FLOORS[self.qlinear]
        return gate(metrics, self.qlinear, "none", floors, job.opened.quality_gate)

    def package_io(self, config, layers, tokens):
        """Inputs and outputs of one package's function of `tokens` tokens."""
        tensor = contract.tensor_spec
        shapes = state_shapes(config, self.max_seq_len, layers)
        first, last = layers[0] == 0, layers[1] == config.num_hidden_layers
        inputs = [tensor("tokens", [1, tokens], "int32") if first
                  else tensor("hidden", [1, tokens, config.hidden_size], "float32"),
                  tensor("input_pos", [tokens], "int32")]
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
                for function, tokens in (("prefill", self.prefill_chunk), ("decode", 1)):
                    entry[function] = dict(zip(("inputs", "outputs"), self.package_io(config, layers, tokens)))
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
                "methods": {m: self.method(config, parts, m, self.prefill_chunk if m == contract.PREFILL_METHOD else 1)
                            for m in contract.TOKEN_METHODS},
                "packages": packages,
                "chain": ("one package" if len(parts) == 1 else
                          "run the packages in order: the first takes tokens, each next one the previous hidden_out, "
                          "the last returns logits; every package has its own states"),
                "graph": dict(zip(names, histograms)) if len(parts) > 1 else histograms[0],
                "prefill_rule": f"full {self.prefill_chunk}-token chunks through prefill, the rest through decode",
            },
            "state": {"max_seq_len": self.max_seq_len, "max_batch_size": 1, "shared_between_methods": True,
                      "reset": "a call whose input_pos[0] == 0 zeroes every state first (in-graph)",
                      "buffers": buffers},
            "verification": verification_record(
                job, evaluator="numpy MIL evaluator (Linux); MLModel.predict not run",
                reference="eager fp32 with fp16 attention caches" if self.qlinear == "fp32" else "eager fp32"),
            "export": {"conversion": conversion, "max_package_bytes": self.max_package_bytes},
        }
