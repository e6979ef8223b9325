"""`--recipe coreml-pte`: an ExecuTorch `.pte` whose every method is one Core ML delegate call (export/coreml/pte.py).

Same graphs and gate as the `coreml` recipe; the delta-net state layout is always "io". Verification reads the Core ML
model back out of the written `.pte` and runs it with the numpy evaluator (the `.pte` cannot run on Linux).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qwen_mobile.runtime import contract
from qwen_mobile.runtime.errors import UsageError

from ..coreml.convert import INT4_BLOCK_SIZE, MIN_DEPLOYMENT
from ..coreml.graph import state_shapes
from ..coreml.plan import VERIFY_DECODE_STEPS, check_package_spec, verification_prompt
from .base import ExportJob, verification_record
from .coreml import CoreMLRecipe


class CoreMLPteRecipe(CoreMLRecipe):
    NAME = "coreml-pte"
    DESCRIPTION = "ExecuTorch .pte entirely inside the Core ML delegate (iOS 18+; see export/coreml/README.md)"
    LABEL = "coreml-pte"
    STAGES = ("load", "lower", "write", "verify")
    STAGED_FROM = "write"

    def __init__(self, *, qlinear: str = "fp16", max_seq_len: int = 1024, prefill_chunk: int = 64,
                 quality_gate: bool | None = None):
        # Text only: the image functions and the vision package are the `coreml` recipe's (export/coreml/README.md).
        super().__init__(qlinear=qlinear, max_seq_len=max_seq_len, prefill_chunk=prefill_chunk, gdn_layout="io",
                         quality_gate=quality_gate, vision=False)

    @classmethod
    def from_cli(cls, args) -> "CoreMLPteRecipe":
        if args.gdn_layout != "io" or args.head_fp32:
            raise UsageError("--gdn-layout/--head-fp32 apply to --recipe coreml only")
        return cls(**cls.cli_options(args))

    def describe(self) -> str:
        return (f"  recipe {self.NAME}, qlinear {self.qlinear}, context {self.max_seq_len}, prefill chunk "
                f"{self.prefill_chunk}, delta-net state io")

    def stage_load(self, job: ExportJob) -> None:
        from .. import source as sources

        job.model = sources.load_model(job.source, max_seq_len=self.max_seq_len, gdn_impl="reference")
        job.n_params = sum(p.numel() for p in job.model.parameters())

    def stage_lower(self, job: ExportJob) -> None:
        from ..coreml.graph import CoreMLDecoder
        from ..coreml.pte import lower_to_pte

        job.scratch["et"], job.scratch["graph"] = lower_to_pte(
            CoreMLDecoder(job.model, "io"), prefill_chunk=self.prefill_chunk, qlinear=self.qlinear,
            say=lambda msg: self.say(msg, job))

    def stage_write(self, job: ExportJob) -> None:
        (job.staging / contract.PROGRAM).write_bytes(job.scratch.pop("et").buffer)

    def stage_verify(self, job: ExportJob) -> None:
        from ..coreml.evaluator import MILModel
        from ..coreml.graph import fp16_kv
        from ..coreml.pte import extract_coreml_model
        from ..coreml.runner import CoreMLRunner
        from ..verify import compare_with_eager

        self.say("verify the delegate's Core ML model with the numpy MIL evaluator", job)
        config = job.config
        shapes = state_shapes(config, self.max_seq_len)
        with tempfile.TemporaryDirectory(prefix="coreml-pte-") as tmp:
            mil = MILModel(extract_coreml_model((job.staging / contract.PROGRAM).read_bytes(), Path(tmp)))
            # The delegate's functions are named after the methods and its outputs after graph nodes (ExecuTorch
            # passes them by position): check them as the package recipe's, outputs by position.
            mil.functions = {contract.COREML_FUNCTIONS.get(k, k): v for k, v in mil.functions.items()}
            check_package_spec(mil, config, self.max_seq_len, self.prefill_chunk, "io", positional_outputs=True)
            state = mil.new_state()

            def call(fn, inputs):
                return dict(zip(("logits", "conv_out", "rec_out"), mil.run(fn, inputs, state).values()))

            runner = CoreMLRunner(call, prefill_chunk=self.prefill_chunk, gdn_layout="io",
                                  io_shapes={n: shapes[n] for n in ("gdn_conv", "gdn_rec")})
            reference = fp16_kv(job.model) if self.qlinear == "fp32" else job.model
            job.prompt = verification_prompt(config.vocab_size, job.tokenizer, self.prefill_chunk)
            metrics = compare_with_eager(runner, reference, job.prompt,
                                         steps=min(VERIFY_DECODE_STEPS, self.max_seq_len - len(job.prompt)))
            job.scratch["histograms"] = {m: mil.op_histogram(f) for m, f in contract.COREML_FUNCTIONS.items()}
        job.result = self.gate(job, metrics)

    def manifest_sections(self, job: ExportJob) -> dict:
        config, tensor = job.config, contract.tensor_spec
        shapes = state_shapes(config, self.max_seq_len)

        def method(tokens):
            return contract.token_method(
                "prefill" if tokens > 1 else "decode",
                inputs=[tensor("tokens", [1, tokens], "int32"), tensor("input_pos", [tokens], "int32"),
                        tensor("conv_in", shapes["gdn_conv"], "float32"),
                        tensor("rec_in", shapes["gdn_rec"], "float32")],
                outputs=[tensor("logits", [1, 1, config.vocab_size], "float32"),
                         tensor("conv_out", shapes["gdn_conv"], "float32"),
                         tensor("rec_out", shapes["gdn_rec"], "float32")],
                min_tokens=tokens, max_tokens=tokens, resets_state_at_position_0=True)

        summary, histograms = job.scratch["graph"], job.scratch["histograms"]
        return {
            "recipe": {"name": self.NAME, "backend": "coreml", "preset": None, "qlinear": self.qlinear,
                       "qembedding": self.qlinear if self.qlinear in ("8w", "4w") else "none",
                       "group_size": INT4_BLOCK_SIZE, "gdn_layout": "io",
                       "compute_precision": "fp32" if self.qlinear == "fp32" else "fp16",
                       "minimum_deployment_target": MIN_DEPLOYMENT},
            "program": {"file": contract.PROGRAM, "op_namespace": contract.OP_NAMESPACE, "kernel_namespaces": [],
                        "methods": {contract.PREFILL_METHOD: method(self.prefill_chunk),
                                    contract.DECODE_METHOD: method(1)},
                        "graph": {m: dict(summary[m], coreml_ops=histograms[m]) for m in summary},
                        "prefill_rule": f"full {self.prefill_chunk}-token chunks through {contract.PREFILL_METHOD}, "
                                        f"the rest through {contract.DECODE_METHOD}"},
            "state": {"max_seq_len": self.max_seq_len, "max_batch_size": 1, "shared_between_methods": True,
                      "reset": "a call whose input_pos[0] == 0 zeroes every state first (in-graph)",
                      "buffers": [dict(tensor("kv_cache", shapes["kv_cache"], "float16"),
                                       seq_axis=contract.KV_SEQ_AXIS, storage="coreml_state")] +
                                 [dict(tensor(n, shapes[n], "float32"), seq_axis=None, storage="host_io")
                                  for n in ("gdn_conv", "gdn_rec")]},
            "verification": verification_record(
                job, evaluator="numpy MIL evaluator on the delegate's Core ML model (Linux)"),
        }
