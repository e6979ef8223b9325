"""The state ops: qwen35::kv_cache_update (the in-place KV cache write) and qwen35::reset_state (zero a state buffer in
place when a chunk starts a sequence).

The eager op (the C++ core through ctypes) is checked against a Python loop over the contract and against torch's
index_copy_; arguments are checked to be named in errors (the Python validator and the C++ one, which also rejects
positions outside the cache before writing anything); and an exported program is checked to write its caches in place:
no whole-cache index_put or copy back in the decode method, the native kernel in its ETDump, and the same logits as the
eager model that writes with index_copy_ (the independent reference) over a prefill and several decode steps.
reset_state is checked against its contract (zeroes NaN and inf too, leaves the buffer alone unless input_pos[0] is 0)
and in the exported `forward`: one reset per state buffer, no `where` left, and a second sequence prefilled into a
program whose state holds the first one gives a fresh eager model's logits.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from qwen_mobile.export.lowering import export_methods, lower_to_executorch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def loop_reference(cache, values, input_pos):
    """The contract written out: row input_pos[t] of every (b, h) gets values[b, h, t]; a later t wins."""
    out = cache.clone()
    for t, p in enumerate(input_pos.tolist()):
        out[:, :, p, :] = values[:, :, t, :]
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d)[6:] for d in DTYPES])
@pytest.mark.parametrize("T", [1, 5])
def test_matches_the_contract_and_index_copy(qrt, dtype, T):
    gen = torch.Generator().manual_seed(T)
    cache = torch.randn(2, 3, 16, 8, generator=gen).to(dtype)
    values = torch.randn(2, 3, T, 8, generator=gen).to(dtype)
    input_pos = torch.randperm(16, generator=gen)[:T]  # distinct, unordered
    want = loop_reference(cache, values, input_pos)
    also = cache.clone().index_copy_(2, input_pos, values)
    ret = torch.ops.qwen35.kv_cache_update(cache, values, input_pos)
    assert torch.equal(cache, want) and torch.equal(cache, also)  # a copy: bit-exact, in place
    assert ret.shape == (1,) and ret.dtype == dtype and ret.item() == 0


def test_non_contiguous_values_and_repeated_positions(qrt):
    """values as the attention passes them (a transposed view); a repeated position keeps the later row."""
    cache = torch.zeros(1, 2, 8, 4)
    values = torch.arange(1 * 3 * 2 * 4, dtype=torch.float32).reshape(1, 3, 2, 4).transpose(1, 2)  # [1,2,3,4] view
    assert not values.is_contiguous()
    input_pos = torch.tensor([6, 1, 6])
    want = loop_reference(cache, values, input_pos)
    torch.ops.qwen35.kv_cache_update(cache, values, input_pos)
    assert torch.equal(cache, want)
    assert torch.equal(cache[:, :, 6], values[:, :, 2]) and (cache[:, :, [0, 2, 3, 4, 5, 7]] == 0).all()


@pytest.mark.parametrize("args,arg", [
    (lambda: (torch.zeros(1, 2, 8, 4, dtype=torch.int32), torch.zeros(1, 2, 1, 4, dtype=torch.int32),
              torch.tensor([0])), "'cache' must be float32"),
    (lambda: (torch.zeros(2, 8, 4), torch.zeros(2, 1, 4), torch.tensor([0])), "'cache' must be 4D"),
    (lambda: (torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 1, 4, dtype=torch.float16), torch.tensor([0])),
     "'values' must have cache's dtype"),
    (lambda: (torch.zeros(1, 2, 8, 4), torch.zeros(1, 3, 1, 4), torch.tensor([0])), "'values' has shape [1, 3, 1, 4]"),
    (lambda: (torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 1, 4), torch.tensor([0], dtype=torch.int32)),
     "'input_pos' must be int64"),
    (lambda: (torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 2, 4), torch.tensor([0])), "'input_pos' has shape [1]"),
    (lambda: (torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 1, 4), torch.tensor([8])),
     "'input_pos' holds 8 at index 0, outside the cache's [0, 8)"),
    (lambda: (torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 2, 4), torch.tensor([3, -1])),
     "'input_pos' holds -1 at index 1"),
], ids=["cache-dtype", "cache-3d", "values-dtype", "values-heads", "pos-dtype", "pos-length", "pos-past-end",
        "pos-negative"])
def test_errors_name_the_argument(qrt, args, arg):
    from qwen_mobile.runtime.state_ops import KvCacheArgumentError

    cache, values, input_pos = args()
    before = cache.clone()
    with pytest.raises(KvCacheArgumentError, match=r"^qwen35::kv_cache_update: argument " + _escape(arg)):
        torch.ops.qwen35.kv_cache_update(cache, values, input_pos)
    assert torch.equal(cache, before)  # nothing written on a rejected call


def test_cpp_core_rejects_positions_before_writing(qrt):
    """The C entry point (what the ExecuTorch kernel also runs) checks every position before it copies any row."""
    from qwen_mobile.runtime.state_ops import _lib

    cache, values = torch.zeros(1, 1, 4, 2), torch.ones(1, 1, 2, 2)
    input_pos = torch.tensor([1, 4])  # the first row is valid, the second is not
    err = ctypes.create_string_buffer(256)
    rc = _lib().qwen35_kv_cache_update(cache.data_ptr(), values.data_ptr(), input_pos.data_ptr(),
                                       (ctypes.c_int64 * 5)(1, 1, 4, 2, 2), 0, err, len(err))
    assert rc == 1 and "argument 'input_pos' holds 4 at index 1" in err.value.decode(), err.value
    assert (cache == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d)[6:] for d in DTYPES])
def test_reset_state_zeroes_only_at_a_sequence_start(qrt, dtype):
    state = torch.randn(2, 3, 5).to(dtype)
    state[0, 0, 0], state[1, 2, 4] = float("nan"), float("inf")
    before = state.clone()
    ret = torch.ops.qwen35.reset_state(state, torch.tensor([7, 8, 9]))  # a later chunk: untouched
    assert torch.equal(state.isnan(), before.isnan()) and torch.equal(state.nan_to_num(), before.nan_to_num())
    assert ret.shape == (1,) and ret.item() == 0
    torch.ops.qwen35.reset_state(state, torch.tensor([0, 1]))
    assert (state == 0).all() and not torch.signbit(state).any()  # +0.0 everywhere, NaN and inf included


@pytest.mark.parametrize("args,arg", [
    (lambda: (torch.zeros(4, dtype=torch.int64), torch.tensor([0])), "'state' must be float32"),
    (lambda: (torch.zeros(4, 4).t(), torch.tensor([0])), "'state' must be contiguous"),
    (lambda: (torch.zeros(4), torch.tensor([0], dtype=torch.int32)), "'input_pos' must be int64"),
    (lambda: (torch.zeros(4), torch.zeros(0, dtype=torch.int64)), "'input_pos' has shape [0]"),
], ids=["state-dtype", "state-strided", "pos-dtype", "pos-empty"])
def test_reset_state_errors_name_the_argument(qrt, args, arg):
    from qwen_mobile.runtime.state_ops import StateArgumentError

    state, input_pos = args()
    with pytest.raises(StateArgumentError, match=r"^qwen35::reset_state: argument " + _escape(arg)):
        torch.ops.qwen35.reset_state(state, input_pos)


def test_reset_state_cpp_core_checks_input_pos(qrt):
    from qwen_mobile.runtime.state_ops import _lib

    state, input_pos = torch.ones(6), torch.zeros(0, dtype=torch.int64)
    err, did = ctypes.create_string_buffer(256), ctypes.c_int32(-1)
    rc = _lib().qwen35_reset_state(state.data_ptr(), input_pos.data_ptr(), (ctypes.c_int64 * 2)(6, 0), 0,
                                   ctypes.byref(did), err, len(err))
    assert rc == 1 and "qwen35::reset_state: argument 'input_pos' has shape [0]" in err.value.decode(), err.value
    assert (state == 1).all()
    pos = torch.tensor([0])
    rc = _lib().qwen35_reset_state(state.data_ptr(), pos.data_ptr(), (ctypes.c_int64 * 2)(6, 1), 0, ctypes.byref(did),
                                   err, len(err))
    assert rc == 0 and did.value == 1 and (state == 0).all()


def _escape(s: str) -> str:
    import re

    return re.escape(s)


# ------------------------------------------------------------------------------------------ exported program --


@pytest.fixture(scope="module")
def tiny_program(qrt, tmp_path_factory):  # qrt: our kernels registered before the .pte loads
    """The tiny preset in fp32 (max_seq_len 64) exported and lowered like a bundle, and its eager twin."""
    torch.manual_seed(0)
    from qwen_mobile.models import Qwen35ForCausalLM

    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=64).eval().requires_grad_(False)
    programs = export_methods(model, 16)
    et, _ = lower_to_executorch(programs, {"get_max_seq_len": 16})
    path = tmp_path_factory.mktemp("kv") / "tiny.pte"
    path.write_bytes(et.buffer)
    return model, et, path


def test_export_leaves_the_eager_model_on_index_copy(tiny_program):
    model, _, _ = tiny_program
    from qwen_mobile.models.qwen35 import CacheWrite

    writes = {type(m.cache_write) for m in model.modules() if hasattr(m, "cache_write")}
    assert writes == {CacheWrite}  # the export's kv_cache_op swap is undone


def test_decode_writes_the_caches_in_place(tiny_program):
    """decode_token: one kv_cache_update.out per cache on the buffer itself, no index_put, no whole-cache copy_."""
    _, et, _ = tiny_program
    ep = et.exported_program("decode_token")
    caches = {n.name for n in ep.graph.nodes if n.op == "placeholder" and n.name.endswith(("k_cache", "v_cache"))}
    assert len(caches) == 2  # the tiny preset has one attention layer
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert not [t for t in targets if "index_put" in t], targets
    updates = [n for n in ep.graph.nodes if n.op == "call_function" and str(n.target) == "qwen35.kv_cache_update.out"]
    assert {n.args[0].name for n in updates} == caches  # the placeholders, not copies of them
    copies_into_caches = [n for n in ep.graph.nodes if n.op == "call_function" and str(n.target) == "aten.copy_.default"
                          and n.args[0].name in caches]
    assert not copies_into_caches
    mutated = ep.graph_signature.buffers_to_mutate
    assert sum(name.endswith(("k_cache", "v_cache")) for name in mutated.values()) == 2


def test_pte_matches_eager_index_copy_and_runs_the_kernel(tiny_program, tmp_path):
    """Prefill in two chunks then decode steps through the program's shared state, against the eager model writing
    with index_copy_ (to 1e-6 of the largest logit: the same fp32 math in another order; a stale or misplaced cache row
    moves logits by far more); the ETDump shows the native kernel."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    from qwen_mobile.runtime.program import BundleProgram

    model, _, path = tiny_program
    ids = [3, 17, 99, 250, 7, 8, 41, 300, 12, 5, 77, 2, 64, 9, 130, 23, 18, 5, 250, 6]  # 20 > the chunk of 16
    program = BundleProgram(path, max_prefill_tokens=16)
    model.reset()
    with torch.no_grad():
        want = model(torch.tensor([ids]), torch.arange(len(ids)))[0, -1]
        torch.testing.assert_close(program.prefill(ids), want, atol=_tol(want), rtol=0)
        for step in range(6):
            token, pos = (11 * step + 3) % 512, len(ids) + step
            want = model(torch.tensor([[token]]), torch.tensor([pos]))[0, -1]
            torch.testing.assert_close(program.decode(token, pos), want, atol=_tol(want), rtol=0)

    mod = _load_for_executorch(str(path), enable_etdump=True)
    mod.run_method("decode_token", [torch.tensor([[5]]), torch.tensor([3])])
    dump = tmp_path / "kv.etdp"
    mod.write_etdump_result_to_file(str(dump))
    names = {ev.name for blk in Inspector(etdump_path=str(dump)).event_blocks for ev in blk.events}
    assert "qwen35::kv_cache_update.out" in names, names


def test_forward_resets_state_in_place(tiny_program):
    """forward: one reset_state.out per state buffer, on the buffer itself, and no `where` over the state."""
    model, et, _ = tiny_program
    ep = et.exported_program("forward")
    from qwen_mobile.export.lowering import state_buffers

    n_state = len(state_buffers(model))
    placeholders = {n.name for n in ep.graph.nodes if n.op == "placeholder"}
    resets = [n for n in ep.graph.nodes if n.op == "call_function" and str(n.target) == "qwen35.reset_state.out"]
    assert len(resets) == n_state and all(n.args[0].name in placeholders for n in resets)
    state_inputs = {arg for arg, buf in ep.graph_signature.inputs_to_buffers.items()
                    if buf.endswith(("k_cache", "v_cache", "conv_state", "recurrent_state"))}
    assert len(state_inputs) == n_state
    wheres_on_state = [n.name for n in ep.graph.nodes if n.op == "call_function" and "where" in str(n.target)
                       and any(getattr(a, "name", None) in state_inputs for a in n.args)]
    assert not wheres_on_state  # (the attention mask's where stays)


def test_a_second_sequence_starts_from_zero_state(tiny_program):
    """Prefill sequence A and decode a step, then prefill sequence B at position 0 in the same program: B's logits
    equal a freshly reset eager model's (the reset ran), and differ from B run over A's leftover state (the check has
    teeth)."""
    from qwen_mobile.runtime.program import BundleProgram

    model, _, path = tiny_program
    program = BundleProgram(path, max_prefill_tokens=16)
    a, b = [5, 9, 200, 31, 77, 8, 140], [300, 12, 44, 9, 61]
    program.prefill(a)
    program.decode(3, len(a))
    got = program.prefill(b)
    with torch.no_grad():
        model.reset()
        want = model(torch.tensor([b]), torch.arange(len(b)))[0, -1]
        model.reset()
        model(torch.tensor([a]), torch.arange(len(a)))
        stale = model(torch.tensor([b]), torch.arange(len(b)))[0, -1]  # what skipping the reset would give
    torch.testing.assert_close(got, want, atol=_tol(want), rtol=0)
    assert float((got - stale).abs().max()) > 100 * _tol(want)


def _tol(logits: torch.Tensor) -> float:
    return 1e-6 * max(1.0, float(logits.abs().max()))


def test_pte_rejects_a_position_past_the_cache(tiny_program):
    """A decode position at max_seq_len fails the method with InvalidArgument (0x12) instead of reading or writing past
    the buffers. The first check to fire is the RoPE table lookup (aten::index, before any cache write); the kernel's
    own position check is tested through its C++ core above. The last valid position still runs."""
    from qwen_mobile.runtime.program import BundleProgram

    _, _, path = tiny_program
    program = BundleProgram(path, max_prefill_tokens=16)
    program.prefill([1, 2, 3])
    with pytest.raises(RuntimeError, match=r"^method->execute\(\) failed with error 0x12$"):
        program.decode(4, 64)
    assert torch.isfinite(program.decode(4, 63)).all()
