"""The export skeleton every recipe runs: open SOURCE, run the recipe's stages with progress, write the bundle under a
temporary name, verify it, build its manifest, and rename it into place.

A recipe (xnnpack.py, coreml.py, coreml_pte.py) is a `Recipe` subclass: its options, its `STAGES` (each a method
`stage_<name>(job)`), the first stage that writes into the bundle folder (`STAGED_FROM`), and the manifest sections
only it knows (`manifest_sections`). Everything else (the staged folder, tokenizer files, timings, the gate's refusal,
the shared manifest sections, the summary) is here, once.
"""

from __future__ import annotations

import datetime
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qwen_mobile.runtime import bundle, contract

from .. import source as sources


@dataclass
class ExportJob:
    """What the stages of one export share."""

    source: str
    opened: sources.OpenedSource
    progress: bool
    model: Any = None  # the model as the stages transform it
    n_params: int = 0
    staging: Path | None = None  # the bundle folder being written (from STAGED_FROM on)
    result: Any = None  # verify.GateResult, set by the verify stage
    prompt: list[int] = field(default_factory=list)  # the verification prompt
    stage_seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    scratch: dict[str, Any] = field(default_factory=dict)  # what one stage hands to a later one

    @property
    def config(self):
        return self.opened.config

    @property
    def tokenizer(self):
        return self.opened.tokenizer


class Recipe:
    """One backend. Subclasses set the class attributes and define `stage_<name>` for each of their STAGES."""

    NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    STAGES: ClassVar[tuple[str, ...]]
    STAGED_FROM: ClassVar[str]  # the first stage that writes files into the bundle folder
    LABEL: ClassVar[str]  # how a failed gate names the recipe ("export verification failed, ...")

    def __init__(self, *, max_seq_len: int, quality_gate: bool | None = None):
        self.max_seq_len = max_seq_len
        self.quality_gate = quality_gate

    # -- what a recipe provides ----------------------------------------------------------------------------------
    @classmethod
    def from_cli(cls, args) -> "Recipe":
        """The recipe from `qwen-mobile export`'s parsed flags; flags it cannot honour are UsageErrors."""
        raise NotImplementedError

    def describe(self) -> str:
        """The effective settings, printed before the export starts."""
        raise NotImplementedError

    def prepare(self, job: ExportJob) -> None:
        """Checks that need SOURCE's config (context length, ...), before any weight is loaded."""

    def full_precision(self) -> bool:
        """Whether a failed gate means a bug (fp32) rather than a too-lossy quantization."""
        raise NotImplementedError

    def manifest_sections(self, job: ExportJob) -> dict:
        """recipe, program, state, verification, the export record's own fields (`export`) and optional sections."""
        raise NotImplementedError

    def thinking_default(self, job: ExportJob) -> bool | None:
        return None

    def say(self, message: str, job: ExportJob) -> None:
        if job.progress:
            print(f"[{self.NAME}] {message}", flush=True)


def run_export(recipe: Recipe, source: str, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Export `source` with `recipe` to a verified bundle folder at `out`; returns the manifest.

    Nothing is left at `out` on failure, and an existing bundle there is replaced only once the new one is whole.
    """
    from tqdm import tqdm

    from ..verify import VerificationError

    out = Path(out)
    opened = sources.open_source(source, out, force=force, quality_gate=recipe.quality_gate)
    job = ExportJob(source=source, opened=opened, progress=progress)
    recipe.prepare(job)
    bar = tqdm(total=len(recipe.STAGES), desc=f"export {recipe.NAME}", unit="stage", disable=not progress,
               leave=False)

    def run(name: str) -> None:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        getattr(recipe, f"stage_{name}")(job)
        job.stage_seconds[name] = time.perf_counter() - t0
        bar.update(1)

    split = recipe.STAGES.index(recipe.STAGED_FROM)
    try:
        for name in recipe.STAGES[:split]:
            run(name)
        with bundle.staged_bundle(out, force, opened.source_dir) as staging:
            job.staging = staging
            for name in contract.TOKENIZER_FILES:
                if opened.source_dir and (opened.source_dir / name).is_file():
                    shutil.copy(opened.source_dir / name, staging / name)
            for name in recipe.STAGES[split:]:
                run(name)
            bar.close()
            if not job.result.passed:
                raise VerificationError(recipe.LABEL, job.result, recipe.full_precision())
            sections = recipe.manifest_sections(job)
            config = job.config
            manifest = contract.build_manifest(
                toolkit_version=bundle.package_version(),
                created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                model=sources.model_section(source, config, job.n_params, opened.random_weights),
                tokenizer=contract.tokenizer_section(staging, bos_id=config.bos_token_id,
                                                     stop_ids=sources.stop_ids(config, opened.tokenizer),
                                                     thinking_default=recipe.thinking_default(job)),
                **{k: v for k, v in sections.items() if k != "export"},
                export={"seconds": round(time.perf_counter() - job.started, 1),
                        "stage_seconds": {k: round(v, 1) for k, v in job.stage_seconds.items()},
                        **sections.get("export", {})},
            )
            return bundle.write_manifest(staging, manifest)
    finally:
        bar.close()


def quality_gate_flag(args) -> bool | None:
    """--quality-gate auto/on/off -> None (on for checkpoints, off for random weights) / True / False."""
    return {"on": True, "off": False, "auto": None}[args.quality_gate]


def verification_record(job: ExportJob, **extra) -> dict:
    """The manifest's `verification`: the gate's numbers, whether it was enforced, the prompt length."""
    return dict(job.result.as_dict(), quality_gate=job.opened.quality_gate, prompt_tokens=len(job.prompt), **extra)
