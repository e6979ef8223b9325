"""The lowering shortcuts give the very program ExecuTorch's own path gives, on models that hold every op the real
sizes lower; off the pinned versions (or with QWEN35_PLAIN_LOWERING=1) none of them runs, and the export says so once.

The models are tiny, but each holds what one family of real exports lowers: both delta-net head regimes (value heads
== key heads as in 0.8B/2B, twice as many as in 4B/9B), a tied and an untied head (9B is untied), int8-dynamic x
int4 linears in XNNPACK (8da4w) and weight-only int4 linears through qwen35::linear_wq (4w), the shared tied table
(qwen35::embedding_wq + linear_wq_a8) and torchao's own embedding, and the state ops (gated_delta_rule,
kv_cache_update). `test_the_variants_cover_every_op_the_recipes_lower` checks that claim on the emitted programs.
"""

import warnings

import pytest
import torch

from checkpoints import perturb_small_params, tiny_text_config
from qwen_mobile.export import lowering_shortcuts as shortcuts
from qwen_mobile.export.lowering import export_methods, lower_to_executorch, program_op_namespaces
from qwen_mobile.export.lowering_shortcuts import edge_passes, parallel_preprocess, xnnpack_passes
from qwen_mobile.export.quantize import quantize_model
from qwen_mobile.export.transforms import fuse_projections
from qwen_mobile.models import Qwen35Config, Qwen35ForCausalLM

# name: (head regime, tied, qlinear, qembedding). Each regime meets each scheme once, tied once and untied once.
VARIANTS = {
    "hv1x-tied-8da4w": ("hv1x", True, "8da4w", "4w"),  # 0.8B/2B phone default: the table shared with the head
    "hv2x-untied-8da4w": ("hv2x", False, "8da4w", "4w"),  # 9B: head in XNNPACK, torchao's 4-bit embedding
    "hv2x-tied-4w": ("hv2x", True, "4w", "4w"),  # 4B weight-only: qwen35::linear_wq for the linears and the head
    "hv1x-untied-4w": ("hv1x", False, "4w", "4w"),  # adds no op to the three above: in the slow run only
}
COVERING = ("hv1x-tied-8da4w", "hv2x-untied-8da4w", "hv2x-tied-4w")  # between them, every op (tested below)
MAX_PREFILL_CHUNK = 16


def make_model(regime: str, tied: bool, qlinear: str, qembedding: str) -> Qwen35ForCausalLM:
    """Fused and quantized as `qwen-mobile export` does it (export/api.py, stage "quantize")."""
    torch.manual_seed(0)
    config = Qwen35Config.from_dict(tiny_text_config(regime, tied) | {"model_type": "qwen3_5_text"})
    model = Qwen35ForCausalLM(config, max_seq_len=64).eval().requires_grad_(False)
    perturb_small_params(model)
    fuse_projections(model)
    quantize_model(model, qlinear, qembedding, 32)
    return model


def lower(model, ours: bool, retraces: list):
    """The emitted program, all shortcuts on (`ours`) or off; each whole-method retrace appends to `retraces`."""
    from torch.export import ExportedProgram

    real = ExportedProgram.run_decompositions

    def counting(self, *args, **kwargs):
        if sum(1 for _ in self.graph.nodes) > 50:  # our methods, not the partitioner's few-node pattern graphs
            retraces.append(1)
        return real(self, *args, **kwargs)

    ExportedProgram.run_decompositions = counting
    try:
        return lower_to_executorch(export_methods(model, MAX_PREFILL_CHUNK), {"get_max_seq_len": MAX_PREFILL_CHUNK},
                                   parallel=ours, share_constants=ours, lean=ours)[0]
    finally:
        ExportedProgram.run_decompositions = real


def lower_both_ways(name: str) -> dict:
    """ours= and upstream= programs, skipped= pass names, forks=, retraces=(ours, upstream) for one variant."""
    model = make_model(*VARIANTS[name])
    edge_passes.skipped.clear()
    xnnpack_passes.skipped.clear()
    forks, ours_retraces, upstream_retraces = [], [], []
    real_fork = parallel_preprocess.os.fork
    parallel_preprocess.os.fork = lambda: forks.append(1) or real_fork()
    try:
        ours = lower(model, True, ours_retraces)
    finally:
        parallel_preprocess.os.fork = real_fork
    skipped = {**edge_passes.skipped, **xnnpack_passes.skipped}
    upstream = lower(model, False, upstream_retraces)
    return dict(ours=ours, upstream=upstream, skipped=skipped, forks=len(forks),
                retraces=(len(ours_retraces), len(upstream_retraces)))


@pytest.fixture(scope="module")
def lowered():
    """variant -> lower_both_ways(variant), each lowered once per test module, when first asked for."""
    cache = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = lower_both_ways(name)
        return cache[name]

    return get


@pytest.mark.parametrize("variant", [v if v in COVERING else pytest.param(v, marks=pytest.mark.slow)
                                     for v in VARIANTS])
def test_our_lowering_is_byte_identical_to_executorchs_own_path(lowered, variant):
    """Ours: a forked preprocess worker, shared constant copies, two retraces skipped, the edge and XNNPACK passes
    without work skipped, one code generation per method. ExecuTorch's: sequential, deep copies, everything."""
    result = lowered(variant)
    assert result["forks"] == 1, "the parallel path did not fork a worker"
    assert result["skipped"], "no pass was skipped: the lean path did not run"
    # Three retraces of forward and of decode_token upstream; lean keeps one of each (nothing for step 3 to do).
    ours_retraces, upstream_retraces = result["retraces"]
    assert upstream_retraces >= 6 and ours_retraces <= upstream_retraces - 4, result["retraces"]
    assert result["ours"].buffer == result["upstream"].buffer


def operators(program) -> set[str]:
    return {op.name for plan in program.executorch_program.execution_plan for op in plan.operators}


def test_the_variants_cover_every_op_the_recipes_lower(lowered):
    """The ops outside XNNPACK that the real exports' programs call, and the delegate itself, each occur in some
    variant. (A new op in a recipe that none of these models lowers fails here, not silently untested.)"""
    results = [lowered(name) for name in COVERING]
    every = set().union(*(operators(result["ours"]) for result in results))
    expected_qwen35 = {"qwen35::gated_delta_rule", "qwen35::kv_cache_update", "qwen35::linear_wq",
                       "qwen35::linear_wq_a8", "qwen35::embedding_wq"}
    assert expected_qwen35 <= every, f"missing: {expected_qwen35 - every}; lowered: {sorted(every)}"
    assert "quantized_decomposed::embedding_4bit" in every, sorted(every)  # the untied 8da4w embedding
    for result in results:
        assert all(plan.delegates for plan in result["ours"].executorch_program.execution_plan
                   if plan.name in ("forward", "decode_token")), "a token method without an XNNPACK delegate"
        assert "qwen35" in program_op_namespaces(result["ours"])


def test_pins_come_from_pyproject_and_match_what_pip_recorded():
    """pinned_versions() reads pyproject.toml; the installed distribution's metadata was written from that same file
    by pip, independently of our parser."""
    from importlib.metadata import requires

    recorded = {r.split("==")[0]: r.split("==")[1] for r in requires("qwen-mobile") if r.split("==")[0] in
                shortcuts.PATCHED_PACKAGES and ";" not in r}
    assert shortcuts.pinned_versions() == recorded


@pytest.mark.parametrize("requirements, pins", [
    (["torch==2.13.0", "executorch == 1.5.1", "numpy>=1.26"], {"torch": "2.13.0", "executorch": "1.5.1"}),
    (["torch>=2.13", "executorch==1.5.1; extra == 'x'", "Executorch==1.5.0"], {"executorch": "1.5.0"}),
])
def test_only_unconditional_exact_pins_count(requirements, pins):
    assert shortcuts._exact_pins(requirements) == pins


def patched_internals() -> dict:
    """The attributes the shortcuts replace, as they are right now."""
    import executorch.exir.backend.backend_api as backend_api
    import executorch.exir.lowered_backend_module as lowered_backend_module
    import executorch.exir.program._program as program_module
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from torch.export import ExportedProgram

    return {"run_decompositions": ExportedProgram.run_decompositions,
            "aten_to_edge_passes": program_module._get_aten_to_edge_passes,
            "legalize_graph": lowered_backend_module.legalize_graph,
            "create_partitions": backend_api._create_partitions_in_graph_module,
            "xnnpack_transform": XNNPACKPassManager.transform,
            "preprocess_multimethod": vars(XnnpackBackend).get("preprocess_multimethod"),
            "copy_for_preprocess": vars(XnnpackBackend).get("copy_exported_program_for_preprocess")}


def enter_twice() -> tuple[list, list]:
    """Enters the shortcuts block twice (two lowerings of one process), all shortcuts asked for; returns the
    PlainLoweringWarnings raised and, per entry, the names of the internals replaced inside the block."""
    real, replaced = patched_internals(), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with shortcuts.lowering_shortcuts({}, parallel=True, share_constants=True, lean=True):
                replaced.append(sorted(k for k, v in patched_internals().items() if v is not real[k]))
    assert patched_internals() == real
    return [w for w in caught if issubclass(w.category, shortcuts.PlainLoweringWarning)], replaced


def test_on_the_pinned_versions_every_shortcut_is_in_place(monkeypatch):
    monkeypatch.delenv(shortcuts.FORCE_PLAIN_ENV, raising=False)
    monkeypatch.setattr(shortcuts, "_said_plain", False)
    said, replaced = enter_twice()
    assert said == []
    assert replaced == [sorted(patched_internals())] * 2


def test_another_executorch_takes_the_plain_path_and_says_so_once(monkeypatch):
    monkeypatch.delenv(shortcuts.FORCE_PLAIN_ENV, raising=False)
    monkeypatch.setattr(shortcuts, "_said_plain", False)
    monkeypatch.setattr(shortcuts, "installed_versions", lambda: {"torch": "2.13.0", "executorch": "1.6.0"})
    said, replaced = enter_twice()
    assert replaced == [[], []]
    assert len(said) == 1
    message = str(said[0].message)
    assert "executorch 1.6.0 (pinned 1.5.1)" in message and "torch 2.13.0 (pinned 2.13.0)" in message, message


def test_the_env_flag_forces_the_plain_path(monkeypatch):
    monkeypatch.setenv(shortcuts.FORCE_PLAIN_ENV, "1")
    monkeypatch.setattr(shortcuts, "_said_plain", False)
    said, replaced = enter_twice()
    assert replaced == [[], []]
    assert len(said) == 1 and shortcuts.FORCE_PLAIN_ENV in str(said[0].message)


def test_asking_for_no_shortcut_checks_nothing_and_says_nothing(monkeypatch):
    """bench/bench_lowering.py and the tests lower ExecuTorch's way on purpose: no warning for that."""
    monkeypatch.setattr(shortcuts, "_said_plain", False)
    monkeypatch.setattr(shortcuts, "installed_versions", lambda: {"torch": "0", "executorch": "0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", shortcuts.PlainLoweringWarning)
        with shortcuts.lowering_shortcuts({}, parallel=False, share_constants=False, lean=False):
            pass
