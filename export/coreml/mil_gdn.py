"""MIL translation of ``qwen35::gated_delta_rule``: the delta rule as plain Core ML ops.

Registering it (`register()`, idempotent) teaches coremltools' torch frontend the op name, so a converted graph
carries no custom layer and every Core ML compute unit can run it:

  * T == 1 (decode): decay, read, delta, rank-1 write, read-out as mul / exp / matmul / add on [B*Hv, 1, ...];
  * T > 1 (prefill): the chunked WY form of `models/gated_delta.chunked_reference`, chunks in parallel, the state
    carried through an unrolled loop over chunks (T is static in every Core ML function). The unit-lower-triangular
    inverse is recursive doubling over constant masks (10 matmuls for C = 64). The Neumann power product
    (I-A)(I+A^2)(I+A^4)... is exact on paper but overflows in fp32 and gives NaN in fp16 on correlated keys.

The op mutates its `state` argument. torch.export records that as `auto_functionalized_v2`, which neither
coremltools nor ExecuTorch's partitioner can read. The Core ML graphs (graph.py) therefore call a functional twin,
`qwen35_coreml::gated_delta_rule_functional` -> (out, new_state), translated by the same code, and
`functionalize_gated_delta(ep)` rewrites any `auto_functionalized_v2(qwen35.gated_delta_rule, ...)` left in a graph
(the stock model's form) into that twin.

Contract (runtime/ops.py): q, k [B,T,Hk,K]; v [B,T,Hv,V]; g (log decay, <= 0), beta [B,T,Hv]; state [B,Hv,K,V];
value head j reads key head j // (Hv // Hk).
"""

from __future__ import annotations

import numpy as np

L2NORM_EPS = 1e-6  # models/gated_delta.py L2NORM_EPS: x * rsqrt(sum(x^2) + eps)
MAX_CHUNK = 64  # models/gated_delta.py CHUNK_SIZE
# ExecuTorch's partitioner looks ops up by their bare __name__ ("gated_delta_rule_functional.default").
OP_ALIASES = ["qwen35::gated_delta_rule", "qwen35.gated_delta_rule", "gated_delta_rule",
              "qwen35_coreml::gated_delta_rule_functional", "gated_delta_rule_functional",
              "qwen35_coreml.gated_delta_rule_functional"]

# Every op of the translation is named "<torch node>__gdr_<n>": precision selectors keep these in fp32 by name.
GDN_OP_TAG = "__gdr_"

_registered = False


class NamedBuilder:
    """`mb` with a unique name under one prefix for every op it builds (explicit name= still wins)."""

    def __init__(self, prefix: str):
        self.prefix, self.count = prefix, 0

    def __getattr__(self, op_type: str):
        from coremltools.converters.mil import Builder

        build = getattr(Builder, op_type)

        def call(**kwargs):
            self.count += 1
            return build(name=kwargs.pop("name", f"{self.prefix}{self.count}"), **kwargs)

        return call


def register() -> None:
    """Register the translation (and our pass fix) with coremltools, once per process."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    from .mil_passes import register as register_passes

    register_passes()  # several Core ML states need a fixed canonicalize_inplace_pattern (mil_passes.py)
    register_torch_op(torch_alias=OP_ALIASES, override=True)(_qwen35_gated_delta_rule)
    _registered = True


def _qwen35_gated_delta_rule(context, node):
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    inputs = _get_inputs(context, node, min_expected=6)
    q, k, v, g, beta, state = inputs[:6]
    use_l2 = True
    if len(inputs) > 6:
        flag = inputs[6]
        use_l2 = bool(flag.val if hasattr(flag, "val") else flag)
    out, new_state = build_gated_delta_rule(q, k, v, g, beta, state, use_l2, name=node.name)
    context.add((out, new_state), torch_name=node.name)


def _shape(x) -> tuple[int, ...]:
    shape = tuple(x.shape)
    if any(not isinstance(d, (int, np.integer)) for d in shape):
        raise ValueError(f"qwen35::gated_delta_rule: Core ML translation needs static shapes, got {shape} for "
                         f"{x.name}; export every Core ML function with a fixed T")
    return tuple(int(d) for d in shape)


def build_gated_delta_rule(q, k, v, g, beta, state, use_qk_l2norm: bool = True, name: str = "gdr"):
    """Emit the MIL ops of one call; returns (out [B,T,Hv,V], new_state [B,Hv,K,V]) vars (fp32 in the builder)."""
    mb = NamedBuilder(f"{name}{GDN_OP_TAG}")
    b, t, hk, dk = _shape(q)
    hv, dv = _shape(v)[2], _shape(v)[3]
    if _shape(k) != (b, t, hk, dk) or _shape(g) != (b, t, hv) or _shape(beta) != (b, t, hv) \
            or _shape(state) != (b, hv, dk, dv) or hv % hk:
        raise ValueError(f"qwen35::gated_delta_rule: shapes break the contract: q {_shape(q)}, k {_shape(k)}, "
                         f"v {_shape(v)}, g {_shape(g)}, beta {_shape(beta)}, state {_shape(state)}")
    bh = b * hv

    def heads_first(x, d):  # [B,T,H,D] -> [B*H,T,D]
        return mb.reshape(x=mb.transpose(x=x, perm=[0, 2, 1, 3]), shape=[b * x.shape[2], t, d])

    if hv != hk:
        # repeat_interleave over heads, never tile: value head j reads key head j // r.
        r = hv // hk
        q = mb.reshape(x=mb.tile(x=mb.expand_dims(x=q, axes=[3]), reps=[1, 1, 1, r, 1]), shape=[b, t, hv, dk])
        k = mb.reshape(x=mb.tile(x=mb.expand_dims(x=k, axes=[3]), reps=[1, 1, 1, r, 1]), shape=[b, t, hv, dk])
    q, k, v = heads_first(q, dk), heads_first(k, dk), heads_first(v, dv)  # [BH,T,K], [BH,T,K], [BH,T,V]
    g = mb.reshape(x=mb.transpose(x=g, perm=[0, 2, 1]), shape=[bh, t])  # [BH,T]
    beta = mb.reshape(x=mb.transpose(x=beta, perm=[0, 2, 1]), shape=[bh, t])  # [BH,T]
    if use_qk_l2norm:
        q, k = _l2norm(mb, q), _l2norm(mb, k)
    q = mb.mul(x=q, y=np.float32(dk ** -0.5))
    s0 = mb.reshape(x=state, shape=[bh, dk, dv])  # [BH,K,V]

    if t == 1:
        out, s1 = _decode_step(mb, q, k, v, g, beta, s0)
    else:
        out, s1 = _chunked(mb, q, k, v, g, beta, s0, t)
    out = mb.transpose(x=mb.reshape(x=out, shape=[b, hv, t, dv]), perm=[0, 2, 1, 3], name=f"{name}_out")  # [B,T,Hv,V]
    s1 = mb.reshape(x=s1, shape=[b, hv, dk, dv], name=f"{name}_state")  # [B,Hv,K,V]
    return out, s1


def _l2norm(mb, x):
    # Not l2_norm: MIL's clamps the norm like F.normalize; ours adds eps under the root.
    ss = mb.reduce_sum(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)
    return mb.mul(x=x, y=mb.rsqrt(x=ss, epsilon=np.float32(L2NORM_EPS)))


def _decode_step(mb, q, k, v, g, beta, s):
    """One token. q, k [BH,1,K]; v [BH,1,V]; g, beta [BH,1]; s [BH,K,V] -> out [BH,1,V], s [BH,K,V]."""
    alpha = mb.expand_dims(x=mb.exp(x=g), axes=[-1])  # [BH,1,1]
    s = mb.mul(x=s, y=alpha)  # decay first
    read = mb.matmul(x=k, y=s)  # k^T S: [BH,1,V]
    delta = mb.mul(x=mb.sub(x=v, y=read), y=mb.expand_dims(x=beta, axes=[-1]))  # [BH,1,V]
    s = mb.add(x=s, y=mb.matmul(x=k, y=delta, transpose_x=True))  # k delta^T, rank 1: [BH,K,V]
    return mb.matmul(x=q, y=s), s  # S^T q: [BH,1,V]


def doubling_masks(c: int) -> list[np.ndarray]:
    """M_s: lower-left s x s block of every aligned 2s x 2s diagonal block, s = 1, 2, ..., c/2 (as gated_delta.py)."""
    idx = np.arange(c)
    masks, s = [], 1
    while s < c:
        same = (idx[:, None] // (2 * s)) == (idx[None, :] // (2 * s))
        lower_left = ((idx[:, None] % (2 * s)) >= s) & ((idx[None, :] % (2 * s)) < s)
        masks.append((same & lower_left).astype(np.float32))
        s *= 2
    return masks


def chunk_for(t: int) -> int:
    """Chunk length for a static T: 64, or the next power of two >= T for short prefills (less padding)."""
    c = 1
    while c < min(t, MAX_CHUNK):
        c *= 2
    return c


def _chunked(mb, q, k, v, g, beta, s, t):
    """Chunked WY form. q, k [BH,T,K]; v [BH,T,V]; g, beta [BH,T]; s [BH,K,V] -> out [BH,T,V], s [BH,K,V]."""
    bh, _, dk = q.shape
    dv = v.shape[-1]
    c = chunk_for(t)
    pad = (-t) % c
    if pad:
        # Padded steps have g = 0 (no decay) and beta = 0 (no write): the final state is untouched.
        q, k, v = (mb.pad(x=x, pad=[0, 0, 0, pad, 0, 0], mode="constant", constant_val=0.0) for x in (q, k, v))
        g, beta = (mb.pad(x=x, pad=[0, 0, 0, pad], mode="constant", constant_val=0.0) for x in (g, beta))
    n = (t + pad) // c
    q = mb.reshape(x=q, shape=[bh, n, c, dk])  # [BH,N,C,K]
    k = mb.reshape(x=k, shape=[bh, n, c, dk])  # [BH,N,C,K]
    v = mb.reshape(x=v, shape=[bh, n, c, dv])  # [BH,N,C,V]
    g = mb.reshape(x=g, shape=[bh, n, c, 1])  # [BH,N,C,1]
    beta = mb.reshape(x=beta, shape=[bh, n, c, 1])  # [BH,N,C,1]

    # Inclusive cumsum within the chunk as a matmul with a constant upper-triangular ones matrix (cumsum is not
    # supported on every compute unit): gamma_row [BH,N,1,C] = g^T @ triu(1).
    triu = np.triu(np.ones((c, c), dtype=np.float32))
    gamma_row = mb.matmul(x=g, y=triu, transpose_x=True)  # [BH,N,1,C]
    gamma = mb.transpose(x=gamma_row, perm=[0, 1, 3, 2])  # [BH,N,C,1]
    causal = np.tril(np.ones((c, c), dtype=np.float32))
    # D_ij = exp(gamma_i - gamma_j) for j <= i. There gamma_i - gamma_j <= 0 since g <= 0; the upper triangle can be
    # large and positive, so clamp at 0 before exp and zero it with the mask: no inf in fp16 or fp32.
    log_d = mb.minimum(x=mb.sub(x=gamma, y=gamma_row), y=np.float32(0.0))  # [BH,N,C,C]
    decay = mb.mul(x=mb.exp(x=log_d), y=causal)  # [BH,N,C,C]
    k_beta = mb.mul(x=k, y=beta)  # [BH,N,C,K]
    strict = np.tril(np.ones((c, c), dtype=np.float32), -1)
    a = mb.mul(x=mb.mul(x=mb.matmul(x=k_beta, y=k, transpose_y=True), y=decay), y=strict)  # [BH,N,C,C]
    r = _unit_lower_inverse(mb, a, c)  # (I + A)^-1
    exp_gamma = mb.exp(x=gamma)  # [BH,N,C,1]
    u = mb.matmul(x=r, y=mb.mul(x=v, y=beta))  # [BH,N,C,V]
    w = mb.matmul(x=r, y=mb.mul(x=k_beta, y=exp_gamma))  # [BH,N,C,K]
    p = mb.mul(x=mb.matmul(x=q, y=k, transpose_y=True), y=decay)  # [BH,N,C,C], lower incl. diagonal
    q_decayed = mb.mul(x=q, y=exp_gamma)  # [BH,N,C,K]
    gamma_end = mb.slice_by_index(x=gamma, begin=[0, 0, c - 1, 0], end=[bh, n, c, 1])  # [BH,N,1,1]
    k_to_end = mb.mul(x=k, y=mb.exp(x=mb.sub(x=gamma_end, y=gamma)))  # [BH,N,C,K]
    chunk_decay = mb.exp(x=gamma_end)  # [BH,N,1,1]

    def chunk(x, i):  # [BH,N,a,b] -> [BH,a,b]
        return mb.squeeze(x=mb.slice_by_index(x=x, begin=[0, i, 0, 0], end=[bh, i + 1, x.shape[2], x.shape[3]]),
                          axes=[1])

    outs = []
    for i in range(n):  # N is static: the carry is unrolled
        v_new = mb.sub(x=chunk(u, i), y=mb.matmul(x=chunk(w, i), y=s))  # [BH,C,V]
        outs.append(mb.add(x=mb.matmul(x=chunk(q_decayed, i), y=s), y=mb.matmul(x=chunk(p, i), y=v_new)))  # [BH,C,V]
        s = mb.add(x=mb.mul(x=s, y=chunk(chunk_decay, i)),
                   y=mb.matmul(x=chunk(k_to_end, i), y=v_new, transpose_x=True))  # [BH,K,V]
    out = outs[0] if n == 1 else mb.concat(values=outs, axis=1)  # [BH,N*C,V]
    if pad:
        out = mb.slice_by_index(x=out, begin=[0, 0, 0], end=[bh, t, dv])  # [BH,T,V]
    return out, s


def _unit_lower_inverse(mb, a, c: int):
    """(I + A)^-1 for strictly lower-triangular A [..., C, C]: R = I - A*M_1; R <- R - R((A*M_s)R), s = 2..C/2."""
    masks = doubling_masks(c)
    if not masks:  # C == 1: A is 0
        return mb.add(x=mb.mul(x=a, y=np.float32(0.0)), y=np.eye(1, dtype=np.float32))
    r = mb.sub(x=np.eye(c, dtype=np.float32), y=mb.mul(x=a, y=masks[0]))
    for m in masks[1:]:
        r = mb.sub(x=r, y=mb.matmul(x=r, y=mb.matmul(x=mb.mul(x=a, y=m), y=r)))
    return r


# ------------------------------------------------------------------------------------ torch.export side --


FUNCTIONAL_SCHEMA = ("gated_delta_rule_functional(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor state, "
                     "bool use_qk_l2norm=True) -> (Tensor, Tensor)")
_functional_lib = None


def functional_op():
    """`qwen35_coreml::gated_delta_rule_functional`: (out, new_state) = our op applied to a copy of the state.

    Conversion-private. ExecuTorch's verifier refuses a mutating op in a functional edge graph, so the Core ML
    graphs name the delta rule by this functional twin; its only lowering is the MIL translation above, and the
    export checks that no node outside the Core ML delegate calls it, so it never reaches a runtime's op table.
    """
    global _functional_lib
    import torch

    import qwen_mobile.runtime  # noqa: F401  (defines qwen35::gated_delta_rule)
    from qwen_mobile.runtime.ops import validate_args

    if _functional_lib is None and not hasattr(torch.ops.qwen35_coreml, "gated_delta_rule_functional"):
        lib = torch.library.Library("qwen35_coreml", "DEF")
        lib.define(FUNCTIONAL_SCHEMA)

        def eager(q, k, v, g, beta, state, use_qk_l2norm=True):
            new_state = state.clone()
            return torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, new_state, use_qk_l2norm), new_state

        def fake(q, k, v, g, beta, state, use_qk_l2norm=True):
            validate_args(q, k, v, g, beta, state)
            return v.new_empty(v.shape), state.new_empty(state.shape)

        lib.impl("gated_delta_rule_functional", eager, "CompositeExplicitAutograd")
        torch.library.register_fake("qwen35_coreml::gated_delta_rule_functional", fake, lib=lib)
        _functional_lib = lib
    return torch.ops.qwen35_coreml.gated_delta_rule_functional.default


def functionalize_gated_delta(ep) -> int:
    """Rewrite `auto_functionalized_v2(qwen35.gated_delta_rule, ...)` nodes of `ep` into the functional twin; drop
    aliases.

    The node `n = gated_delta_rule_functional(q, k, v, g, beta, base, use_qk_l2norm)` returns the pair
    (out, new_state) that auto_functionalized_v2 returned, so its getitem(n, 0) / getitem(n, 1) users stay as they
    are. Works on ATen (torch.export) and edge (ExecuTorch) programs. Returns the number of rewritten nodes; raises
    for any other mutating op, or if the state is a view of a larger base (the Core ML graphs pass whole tensors).
    """
    import torch

    op = torch.ops.qwen35.gated_delta_rule.default
    twin = functional_op()
    count = 0
    for node in list(ep.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.alias.default or "alias_copy" in str(node.target):
            # Functional graphs keep aliases of tensors that are never mutated (`.float()` of an fp32 tensor):
            # identities coremltools has no translation for.
            node.replace_all_uses_with(node.args[0])
            ep.graph.erase_node(node)
            continue
        if "auto_functionalized" not in str(node.target):
            continue
        if not node.args or node.args[0] is not op:
            raise NotImplementedError(f"Core ML export: mutating op {node.args[:1]} in node {node.name} has no "
                                      "translation; only qwen35::gated_delta_rule is rewritten")
        kw = dict(node.kwargs)
        bases = kw.pop("_all_bases")
        index = kw.pop("_state_base_index")
        for key in ("_state_size", "_state_stride", "_state_storage_offset", "_state_slice_dim",
                    "_state_slice_start", "_state_slice_end", "_state_alias"):
            if kw.pop(key, None) is not None:
                raise NotImplementedError(f"{node.name}: the gated-delta state is a view ({key}); pass a whole "
                                          "tensor (clone it) to the op in Core ML graphs")
        if len(bases) != 1 or index != 0:
            raise NotImplementedError(f"{node.name}: expected one state base, got {len(bases)}")
        node.target = twin
        node.args = (kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"], bases[0], kw.get("use_qk_l2norm", True))
        node.kwargs = {}
        count += 1
    ep.graph.lint()
    ep.graph_module.recompile()
    return count
