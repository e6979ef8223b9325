"""Typed entry points behind the CLI: resolve a model source, load it, compare it with transformers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qwen_mobile.models import Qwen35Config, Qwen35ForCausalLM, available_presets, fp32_compute
from qwen_mobile.runtime.bundle import BUNDLE_FORMAT, MANIFEST_SCHEMA_VERSION, check_out, package_version
from qwen_mobile.runtime.errors import UsageError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED_MODELS = {"nano": MODELS_DIR / "nano"}  # name -> HF folder shipped with the package
DEFAULT_SOURCE = "nano"


def resolve_source(source: str) -> Path | str:
    """A local HF folder, the name of a shipped model (`nano`), or a preset name (random weights) -> path or preset."""
    path = Path(source)
    if path.is_dir():
        return path
    if source in SHIPPED_MODELS:
        shipped = SHIPPED_MODELS[source]
        if not (shipped / "config.json").is_file():
            raise FileNotFoundError(f"shipped model '{source}' is missing its files at {shipped}")
        return shipped
    if source in available_presets():
        return source
    raise FileNotFoundError(f"SOURCE '{source}' is neither a folder, a shipped model {sorted(SHIPPED_MODELS)}, "
                            f"nor a preset {available_presets()}")


def load_model(source: str, *, max_seq_len: int | None = None, gdn_impl: str = "op",
               dtype: torch.dtype = torch.float32, seed: int = 0, keep_bf16: bool = False) -> Qwen35ForCausalLM:
    """keep_bf16: a checkpoint's bf16 tensors stay bf16 (see models/weights.py); run it under fp32_compute."""
    resolved = resolve_source(source)
    if isinstance(resolved, Path):
        return Qwen35ForCausalLM.from_pretrained(resolved, dtype=dtype, max_seq_len=max_seq_len, gdn_impl=gdn_impl,
                                                 keep_bf16=keep_bf16)
    torch.manual_seed(seed)
    model = Qwen35ForCausalLM.from_preset(resolved, max_seq_len=max_seq_len, gdn_impl=gdn_impl)
    _randomize_small_params(model, seed)
    return model.to(dtype).eval().requires_grad_(False)


@torch.no_grad()
def _randomize_small_params(model: torch.nn.Module, seed: int) -> None:
    """Random-weight presets: give norms and gates non-default values so nothing is trivially identity."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(("A_log", "dt_bias")):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        elif p.dim() >= 2:
            p.normal_(0.0, 0.02, generator=gen)


@dataclass
class ParityReport:
    source: str
    prompt_len: int
    new_tokens: int
    max_abs_logit_diff: float
    greedy_ours: list[int]
    greedy_transformers: list[int]
    decode_tok_s_ours: float
    decode_tok_s_transformers: float
    extra: dict = field(default_factory=dict)

    @property
    def greedy_match(self) -> bool:
        return self.greedy_ours == self.greedy_transformers


@torch.no_grad()
def check_against_transformers(source: str, prompt_ids: list[int], new_tokens: int = 16,
                               gdn_impl: str = "op") -> ParityReport:
    """Load `source` (HF folder) with our model and with transformers; compare prefill logits and greedy decoding."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_source(source)
    if not isinstance(resolved, Path):
        raise ValueError(f"check needs a checkpoint folder or shipped model, not the random preset '{source}'")
    ours = Qwen35ForCausalLM.from_pretrained(resolved, max_seq_len=len(prompt_ids) + new_tokens + 1,
                                             gdn_impl=gdn_impl)
    theirs = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    ours.reset()
    diff = (ours(ids, torch.arange(len(prompt_ids))) - theirs(input_ids=ids, use_cache=False).logits).abs().max()

    t0 = time.perf_counter()
    greedy_ours = ours.generate(prompt_ids, new_tokens)
    dt_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    greedy_theirs = theirs.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=0)[0, len(prompt_ids):].tolist()
    dt_theirs = time.perf_counter() - t0
    return ParityReport(str(source), len(prompt_ids), new_tokens, float(diff), greedy_ours, greedy_theirs,
                        new_tokens / dt_ours, new_tokens / dt_theirs)


def describe(config: Qwen35Config) -> dict:
    return {
        "layers": f"{config.num_hidden_layers} ({config.num_linear_layers} delta-net + {config.num_full_layers} attention)",
        "hidden / intermediate": f"{config.hidden_size} / {config.intermediate_size}",
        "delta-net heads k/v x dim": f"{config.linear_num_key_heads}/{config.linear_num_value_heads} x "
                                     f"{config.linear_key_head_dim}",
        "attention heads q/kv x dim": f"{config.num_attention_heads}/{config.num_key_value_heads} x {config.head_dim}",
        "vocab": config.vocab_size,
        "tied embeddings": config.tie_word_embeddings,
    }


# --------------------------------------------------------------------------------------------------- export --

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
RECIPES = {"xnnpack": "ExecuTorch .pte, XNNPACK delegate, our qwen35 kernel for the delta rule"}
# Linear schemes each recipe can lower. Weight-only linears (8w, 4w) run our qwen35::linear_wq kernel outside the
# XNNPACK delegates (torchao's dequantize_affine has no out variant in executorch 1.5.1).
RECIPE_QLINEAR = {"xnnpack": ("fp32", "8da4w", "8da8w", "8w", "4w")}
DEFAULT_PRESET = "xnnpack-8da4w"
# The gate's fp32 reference upcasts a bf16-stored model whole when that costs less than this (0.8B: 3.0 GB, 2B: about
# 7.5 GB), else one layer per step, which bounds memory but converts every weight again at each of its 33 steps.
REFERENCE_UPCAST_WHOLE_BELOW = 4 << 30


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
    preset: str | None = None
    origin: dict = field(default_factory=dict)  # field -> where its value came from, for the printed recipe

    SHOWN = ("recipe", "qlinear", "qembedding", "group_size", "tied_table", "max_seq_len", "max_prefill_chunk")

    @classmethod
    def resolve(cls, preset: str | None = DEFAULT_PRESET, **overrides) -> "ExportSettings":
        """Preset values, then every override that is not None (the CLI's explicit flags).

        preset None with a --qlinear that names a reviewed preset (xnnpack-<qlinear>) starts from that preset, so
        `--qlinear fp32` alone means full precision rather than fp32 linears beside the default's 4-bit embedding.
        """
        from .quantize import GROUP_SIZES, QEMBEDDING, TIED_TABLE

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
        base.update(explicit)
        settings = cls(**base, preset=preset, origin=origin)
        if (settings.qlinear == "fp32" and "qlinear" in explicit and "qembedding" not in explicit
                and settings.qembedding != "none"):
            raise UsageError(f"--qlinear fp32 with --preset {preset} keeps its {settings.qembedding} embedding: for a "
                             "full-precision bundle use --preset xnnpack-fp32 (or drop --preset); to keep the "
                             f"quantized embedding say so with --qembedding {settings.qembedding}")
        if settings.recipe not in RECIPES:
            raise UsageError(f"--recipe {settings.recipe!r}: unknown; valid recipes: {sorted(RECIPES)}")
        for flag, value, valid in (("--qlinear", settings.qlinear, RECIPE_QLINEAR[settings.recipe]),
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
        return "\n".join(f"  {k:<18} {getattr(self, k)!s:<8} ({self.origin.get(k, 'built-in default')})"
                         for k in self.SHOWN)


@dataclass
class OpenedSource:
    """What every exporter needs to know about SOURCE before it loads any weight."""

    source_dir: Path | None  # None for a preset (random weights)
    config: Qwen35Config
    tokenizer: object | None  # tokenizers.Tokenizer when the folder has tokenizer.json
    random_weights: bool
    quality_gate: bool  # the caller's choice, or by default on for checkpoints and off for random weights


def open_source(source: str, out: str | Path, *, force: bool, quality_gate: bool | None = None) -> OpenedSource:
    """Refuse an existing --out without --force, resolve SOURCE, read its config and tokenizer (warning without one).

    quality_gate None: enforce quantization floors only on trained weights, where agreement means something."""
    import warnings

    resolved = resolve_source(source)
    source_dir = resolved if isinstance(resolved, Path) else None
    check_out(out, force, source_dir)
    config = Qwen35Config.from_json(source_dir) if source_dir else Qwen35Config.from_preset(str(resolved))
    tokenizer = None
    if source_dir and (source_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
    else:
        warnings.warn(f"SOURCE {source}: no tokenizer.json; the bundle will be run with token ids only")
    if not _stop_ids(config, tokenizer):
        warnings.warn(f"SOURCE {source}: config.json has no eos_token_id and there is no tokenizer with <|im_end|> or "
                      "<|endoftext|>; the bundle will have no stop ids (generation stops only at the token limit)")
    random_weights = source_dir is None
    return OpenedSource(source_dir, config, tokenizer, random_weights,
                        quality_gate=not random_weights if quality_gate is None else quality_gate)


def check_context(max_seq_len: int, config: Qwen35Config) -> None:
    if max_seq_len > config.max_position_embeddings:
        raise ValueError(f"--max-seq-len {max_seq_len} exceeds the model's max_position_embeddings "
                         f"({config.max_position_embeddings})")


def manifest_identity(source: str, config: Qwen35Config, n_params: int, random_weights: bool) -> dict:
    """The manifest fields every exporter writes the same way: format, writer, time and the model."""
    import datetime

    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "format": BUNDLE_FORMAT,
        "toolkit_version": package_version(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"id": Path(str(source)).name, "source": str(source), "size": _size_name(config),
                  "params": n_params, "random_weights": random_weights, "config": config.to_hf_dict()},
    }


def _stop_ids(config: Qwen35Config, tokenizer) -> list[int]:
    ids = list(config.eos_token_id)
    if tokenizer is not None:
        for token in ("<|im_end|>", "<|endoftext|>"):
            tid = tokenizer.token_to_id(token)
            if tid is not None and tid not in ids:
                ids.append(tid)
    return ids


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_record(parallel_preprocess) -> dict:
    """The export's memory figures for the manifest (export/README.md, "Manifest").

    `peak_rss_bytes` is this process's ru_maxrss. The forked XNNPACK worker
    (lowering_shortcuts/parallel_preprocess.py) overlaps it only while partitions are preprocessed: `worker_peak_rss_bytes` is its ru_maxrss and
    `pair_peak_pss_bytes` the highest sampled PSS sum of the two while it ran. `peak_memory_bytes`, the larger of
    this process's peak and that sum, is the export's peak use (a sampled lower bound, tight to the sampling
    interval); exporter + worker RSS is an upper bound that counts the pages they share after fork twice.
    """
    own = _peak_rss_bytes()
    pair = parallel_preprocess.last_pair_peak_pss_bytes
    return {"peak_rss_bytes": own, "worker_peak_rss_bytes": parallel_preprocess.last_worker_peak_rss_bytes,
            "pair_peak_pss_bytes": pair, "peak_memory_bytes": max(own, pair)}


def export(source: str, out: str | Path, *, preset: str | None = DEFAULT_PRESET, force: bool = False,
           quality_gate: bool | None = None, progress: bool = True, **overrides) -> dict:
    """Export `source` to a verified bundle folder at `out`; returns the manifest. Nothing is left on failure."""
    import shutil
    import warnings

    from tqdm import tqdm

    from qwen_mobile.runtime.chat import thinking_default
    from qwen_mobile.runtime.program import BundleProgram

    from qwen_mobile.runtime import bundle
    from .lowering import (DECODE_METHOD, TOKEN_METHODS, export_methods, lower_to_executorch, program_op_namespaces,
                           seq_axis, state_buffers)
    from .lowering_shortcuts import parallel_preprocess
    from .quantize import check_weight_only_nodes, quantize_model
    from .verify import (VerificationError, compare_with_reference, eager_reference, fixed_prompt, gate,
                         op_nodes_per_method)

    settings = ExportSettings.resolve(preset, **overrides)
    out = Path(out)
    opened = open_source(source, out, force=force, quality_gate=quality_gate)
    source_dir, config, tokenizer, random_weights, quality_gate = (
        opened.source_dir, opened.config, opened.tokenizer, opened.random_weights, opened.quality_gate)
    if settings.max_seq_len > config.max_position_embeddings:
        if overrides.get("max_seq_len") is not None:
            check_context(settings.max_seq_len, config)
        # Only the preset's default is too long for this model: use the model's whole context instead.
        warnings.warn(f"the preset's max_seq_len {settings.max_seq_len} exceeds {source}'s max_position_embeddings; "
                      f"using {config.max_position_embeddings}")
        settings.max_seq_len = config.max_position_embeddings
        settings.max_prefill_chunk = min(settings.max_prefill_chunk, settings.max_seq_len)

    stages = ["load", "reference", "quantize", "export", "lower", "write", "verify"]
    bar = tqdm(total=len(stages), desc="export", unit="stage", disable=not progress, leave=False)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    parallel_preprocess.reset_memory_records()

    def stage(name):
        bar.set_postfix_str(name)
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = time.perf_counter() - timings[name]
        bar.update(1)

    stage("load")
    # bf16-stored tensors (the releases' format) stay bf16 until each is quantized or exported: bf16 -> fp32 is exact,
    # and the model never exists in fp32 whole (4B: 8.4 GB instead of 16.8 GB).
    model = load_model(source, max_seq_len=settings.max_seq_len, gdn_impl="op", keep_bf16=True)
    n_params = sum(p.numel() for p in model.parameters())
    load_dtypes = sorted({_dtype(p) for p in model.parameters()})
    done("load")
    stage("reference")
    # Eager fp32's answers for the gate, taken now: quantization then rewrites this same model in place, so no fp32
    # copy is held through lowering (peak RSS; a 0.8B model is 3 GB in fp32).
    prompt = fixed_prompt(config.vocab_size, tokenizer)
    with fp32_compute(model, upcast_whole_below=REFERENCE_UPCAST_WHOLE_BELOW):
        reference = eager_reference(model, prompt, steps=min(32, settings.max_seq_len - len(prompt)))
    done("reference")
    stage("quantize")
    model.fuse_projections()  # exact; fewer linears to quantize, lower and run (models/qwen35.py)
    qreport = quantize_model(model, settings.qlinear, settings.qembedding, settings.group_size, settings.tied_table)
    done("quantize")
    stage("export")
    programs = export_methods(model, settings.max_prefill_chunk)
    op_counts = op_nodes_per_method(programs)
    expected = config.num_linear_layers
    for method in TOKEN_METHODS:
        count = op_counts[method]
        if count != expected:
            raise RuntimeError(f"export: method '{method}' has {count} qwen35.gated_delta_rule nodes, expected "
                               f"{expected} (one per delta-net layer); refusing to ship a graph without our kernel")
    check_weight_only_nodes(programs, qreport)  # raises if a weight-only module lost its qwen35 op
    done("export")
    stage("lower")
    stop_ids = _stop_ids(config, tokenizer)
    metadata = {
        "get_max_seq_len": settings.max_prefill_chunk, "get_max_context_len": settings.max_seq_len,
        "get_vocab_size": config.vocab_size, "get_eos_ids": stop_ids, "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False, "enable_dynamic_shape": True, "get_n_layers": config.num_hidden_layers,
    }
    if config.bos_token_id is not None:
        metadata["get_bos_id"] = config.bos_token_id
    et, graph_summary = lower_to_executorch(programs, metadata)
    del programs  # their graphs and constant copies; the bytes to write are in `et` now
    namespaces = program_op_namespaces(et)
    done("lower")

    with bundle.staged_bundle(out, force, opened.source_dir) as staging:
        stage("write")
        (staging / bundle.PROGRAM).write_bytes(et.buffer)
        del et
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if source_dir and (source_dir / name).is_file():
                shutil.copy(source_dir / name, staging / name)
        done("write")
        stage("verify")
        program = BundleProgram(staging / bundle.PROGRAM, max_prefill_tokens=settings.max_prefill_chunk,
                                kernel_namespaces=namespaces)
        metrics = compare_with_reference(program, reference)
        del program
        result = gate(metrics, settings.qlinear, settings.qembedding, settings.verify, quality_gate)
        done("verify")
        bar.close()
        if not result.passed:
            raise VerificationError("export", result, settings.qlinear == "fp32" and settings.qembedding == "none")

        vocab = config.vocab_size
        tensor = lambda n, shape, dtype: {"name": n, "shape": shape, "dtype": dtype}  # noqa: E731
        state_specs = [tensor(n, list(b.shape), _dtype(b)) for n, b in state_buffers(model)]  # the snapshot layout
        manifest = {
            **manifest_identity(source, config, n_params, random_weights),
            "recipe": {"name": settings.recipe, "backend": "xnnpack", "preset": settings.preset,
                       "qlinear": settings.qlinear, "qembedding": settings.qembedding,
                       "group_size": settings.group_size, "tied_table_copies": qreport.tied_table_copies,
                       "head": qreport.head},
            "program": {
                "file": bundle.PROGRAM, "op_namespace": "qwen35", "kernel_namespaces": namespaces,
                "methods": {
                    "forward": {"inputs": [tensor("tokens", [1, "T"], "int64"), tensor("input_pos", ["T"], "int64")],
                                "outputs": [tensor("logits", [1, 1, vocab], "float32")],
                                "kind": "prefill", "min_tokens": 1, "max_tokens": settings.max_prefill_chunk,
                                "resets_state_at_position_0": True},
                    DECODE_METHOD: {"inputs": [tensor("tokens", [1, 1], "int64"),
                                               tensor("input_pos", [1], "int64")],
                                    "outputs": [tensor("logits", [1, 1, vocab], "float32")],
                                    "kind": "decode", "min_tokens": 1, "max_tokens": 1,
                                    "resets_state_at_position_0": False},
                    "state_read": {"kind": "state_read", "inputs": [],
                                   "outputs": state_specs},
                    "state_write": {"kind": "state_write",
                                    "inputs": state_specs,
                                    "outputs": [tensor("zero", [1], "float32")]},
                },
                "metadata": metadata,
                "graph": graph_summary,
            },
            "state": {"max_seq_len": settings.max_seq_len, "max_batch_size": 1, "shared_between_methods": True,
                      "reset": "a forward call whose input_pos[0] == 0 zeroes every buffer first",
                      "buffers": [dict(spec, seq_axis=seq_axis(spec["name"])) for spec in state_specs]},
            "tokenizer": {"file": "tokenizer.json" if (staging / "tokenizer.json").is_file() else None,
                          "config_file": ("tokenizer_config.json" if (staging / "tokenizer_config.json").is_file()
                                          else None),
                          "bos_id": config.bos_token_id, "stop_ids": stop_ids,
                          "thinking_default": thinking_default(_size_name(config), _chat_template(source_dir))},
            "verification": dict(result.as_dict(), quality_gate=quality_gate, prompt_tokens=len(prompt)),
            "sample_prompt": {"ids": prompt, "text": tokenizer.decode(prompt) if tokenizer is not None else None},
            "export": {"seconds": round(time.perf_counter() - t_all, 1), **_memory_record(parallel_preprocess),
                       "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
                       "loaded_dtypes": load_dtypes,
                       "quantization": qreport.__dict__},
        }
        manifest = bundle.write_manifest(staging, manifest)
    return manifest


def _chat_template(source_dir: Path | None) -> str | None:
    path = source_dir / "tokenizer_config.json" if source_dir else None
    if path is None or not path.is_file():
        return None
    template = json.loads(path.read_text()).get("chat_template")
    if template is None and (source_dir / "chat_template.jinja").is_file():  # transformers >= 4.50 saves it apart
        template = (source_dir / "chat_template.jinja").read_text()
    return template


def _dtype(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _size_name(config: Qwen35Config) -> str | None:
    for name in ("0_8b", "2b", "4b", "9b"):
        preset = Qwen35Config.from_preset(name)
        if (preset.hidden_size, preset.num_hidden_layers, preset.linear_num_value_heads) == (
                config.hidden_size, config.num_hidden_layers, config.linear_num_value_heads):
            return name
    return None
