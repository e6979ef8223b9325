"""The gated delta rule: two references and the one dispatcher the model calls.

Per token t and value head h (architecture doc 2.3), with k, q l2-normalised and q scaled by 1/sqrt(K):

    S   <- exp(g_t) * S                 # decay first
    e   <- beta_t * (v_t - S^T k_t)     # delta against the decayed state
    S   <- S + k_t e^T                  # rank-1 write
    o_t <- S^T q_t

`recurrent_reference` is that loop. `chunked_reference` is the same map computed 64 tokens at a time in the WY form,
with the unit-lower-triangular inverse built by recursive doubling over constant masks: no `solve_triangular`, no
loop over rows, nothing data dependent, so it exports. The power series (I-A)(I+A^2)(I+A^4)... is avoided on
purpose: it overflows in fp32 when keys in a chunk are correlated.

Both references compute in float32 (float64 stays float64, which the tests use) and never run as the custom op's
implementation: the op (`torch.ops.qwen35.gated_delta_rule`, registered by `qwen_mobile.runtime`) is tested against
them.
"""

from __future__ import annotations

import torch

CHUNK_SIZE = 64
L2NORM_EPS = 1e-6

IMPLS = ("op", "reference", "chunked", "recurrent")


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    # Not F.normalize: that clamps the norm, this adds eps under the root (transformers/fla semantics).
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm):
    """Head-repeat q/k, move heads before time, normalise; everything in the compute dtype.

    Shapes: q, k [B,T,Hk,K]; v [B,T,Hv,V]; g, beta [B,T,Hv]; initial_state [B,Hv,K,V] or None
         -> q, k [B,Hv,T,K]; v [B,Hv,T,V]; g, beta [B,Hv,T]; state [B,Hv,K,V] (zeros if None)
    """
    compute = torch.promote_types(v.dtype, torch.float32)
    hk, hv = k.shape[2], v.shape[2]
    if hv % hk:
        raise ValueError(f"v has {hv} heads, not a multiple of the {hk} heads of k")
    if hv != hk:
        # Value head j reads key head j // (hv // hk): repeat_interleave, never tile.
        q = q.repeat_interleave(hv // hk, dim=2)
        k = k.repeat_interleave(hv // hk, dim=2)
    q, k, v = (x.transpose(1, 2).to(compute) for x in (q, k, v))  # [B,Hv,T,D]
    g, beta = (x.transpose(1, 2).to(compute) for x in (g, beta))  # [B,Hv,T]
    if use_qk_l2norm:
        q, k = _l2norm(q), _l2norm(k)
    q = q * q.shape[-1] ** -0.5
    b, h, _, dk = k.shape
    if initial_state is None:
        state = torch.zeros(b, h, dk, v.shape[-1], dtype=v.dtype)
    else:
        state = initial_state.to(v.dtype)
    return q, k, v, g, beta, state


def recurrent_reference(q, k, v, g, beta, initial_state=None, use_qk_l2norm=True):
    """Token-by-token gated delta rule.

    Shapes:
        q, k: [B, T, Hk, K]; v: [B, T, Hv, V]; g (log decay, <= 0), beta: [B, T, Hv]
        initial_state: [B, Hv, K, V] or None (zeros)
        returns out [B, T, Hv, V] (dtype of v), final_state [B, Hv, K, V] (compute dtype)
    """
    out_dtype = v.dtype
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm)
    b, h, t, _ = k.shape
    dv = v.shape[-1]
    outs = []
    for i in range(t):
        state = state * g[:, :, i].exp()[..., None, None]
        read = (state * k[:, :, i, :, None]).sum(-2)  # S^T k: [B,Hv,V]
        delta = (v[:, :, i] - read) * beta[:, :, i, None]  # [B,Hv,V]
        state = state + k[:, :, i, :, None] * delta[:, :, None, :]  # k e^T: [B,Hv,K,V]
        outs.append((state * q[:, :, i, :, None]).sum(-2))  # S^T q: [B,Hv,V]
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(b, h, 0, dv)  # [B,Hv,T,V]
    return out.transpose(1, 2).contiguous().to(out_dtype), state


def _doubling_masks(chunk: int, dtype) -> list[torch.Tensor]:
    """M_s selects the lower-left s x s block of every aligned 2s x 2s diagonal block, s = 1, 2, 4, ..., chunk/2."""
    idx = torch.arange(chunk)
    masks = []
    s = 1
    while s < chunk:
        same_block = (idx[:, None] // (2 * s)) == (idx[None, :] // (2 * s))
        lower_left = ((idx[:, None] % (2 * s)) >= s) & ((idx[None, :] % (2 * s)) < s)
        masks.append((same_block & lower_left).to(dtype))
        s *= 2
    return masks


def unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """(I + A)^-1 for strictly lower-triangular A by recursive doubling of block-triangular inverses.

    After the step for size s every aligned 2s-block of R is exact: for L = [[L11, 0], [L21, L22]],
    L^-1 = [[R11, 0], [-R22 L21 R11, R22]]. log2(C) steps of two matmuls each; no indexing, no data-dependent control.

    Shapes: a [..., C, C] -> [..., C, C]
    """
    c = a.shape[-1]
    masks = _doubling_masks(c, a.dtype)
    eye = torch.eye(c, dtype=a.dtype)
    r = eye - a * masks[0]
    for m in masks[1:]:
        r = r - r @ ((a * m) @ r)
    return r


def chunked_reference(q, k, v, g, beta, initial_state=None, use_qk_l2norm=True, chunk_size=CHUNK_SIZE):
    """Chunked (WY) gated delta rule, exact up to round-off; the last chunk may be ragged.

    Shapes:
        q, k: [B, T, Hk, K]; v: [B, T, Hv, V]; g (log decay, <= 0), beta: [B, T, Hv]
        initial_state: [B, Hv, K, V] or None (zeros)
        returns out [B, T, Hv, V] (dtype of v), final_state [B, Hv, K, V] (compute dtype)
    """
    out_dtype = v.dtype
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm)
    b, h, t, _ = k.shape
    c = chunk_size
    pad = (c - t % c) % c
    if pad:
        # Padded steps carry g = 0 (no decay) and beta = 0 (no write), so the final state is untouched.
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, pad)) for x in (g, beta))
    n = (t + pad) // c
    q, k, v = (x.reshape(b, h, n, c, x.shape[-1]) for x in (q, k, v))  # [B,H,N,C,D]
    g, beta = (x.reshape(b, h, n, c) for x in (g, beta))  # [B,H,N,C]

    gamma = g.cumsum(-1)  # [B,H,N,C] log decay from chunk start to i, inclusive
    causal = torch.ones(c, c, dtype=torch.bool).tril()
    # D_ij = exp(gamma_i - gamma_j) for j <= i; masked before exp so the upper triangle cannot overflow.
    log_d = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf"))
    decay = log_d.exp()  # [B,H,N,C,C]
    k_beta = k * beta[..., None]
    a = ((k_beta @ k.transpose(-1, -2)) * decay).tril(-1)  # [B,H,N,C,C]
    r = unit_lower_inverse(a)
    u = r @ (v * beta[..., None])  # [B,H,N,C,V]
    w = r @ (k_beta * gamma.exp()[..., None])  # [B,H,N,C,K]
    p = (q @ k.transpose(-1, -2)) * decay  # [B,H,N,C,C], lower incl. diagonal
    q_decayed = q * gamma.exp()[..., None]
    k_to_end = k * (gamma[..., -1:] - gamma).exp()[..., None]
    chunk_decay = gamma[..., -1].exp()[..., None, None]  # [B,H,N,1,1]

    outs = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ state  # [B,H,C,V]
        outs.append(q_decayed[:, :, i] @ state + p[:, :, i] @ v_new)
        state = state * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ v_new
    out = torch.cat(outs, dim=2)[:, :, :t]  # [B,H,T,V]
    return out.transpose(1, 2).contiguous().to(out_dtype), state


def gated_delta_rule(q, k, v, g, beta, state: torch.Tensor, *, impl: str = "op", use_qk_l2norm: bool = True):
    """Run the gated delta rule and update `state` in place. The one place the model chooses an implementation.

    impl:
        "op"        - `torch.ops.qwen35.gated_delta_rule` (our native kernel; exports as one node). Raises if the
                      op is not registered: there is no silent fallback.
        "reference" - recurrent reference for T == 1, chunked reference otherwise.
        "chunked" / "recurrent" - force one reference.

    Shapes: q, k [B,T,Hk,K]; v [B,T,Hv,V]; g, beta [B,T,Hv]; state [B,Hv,K,V] float32 -> out [B,T,Hv,V]
    """
    if impl == "op":
        op = native_op("gated_delta_rule", "or pass impl='reference' explicitly for an eager-only run")
        return op(q, k, v, g, beta, state, use_qk_l2norm)
    if impl == "reference":
        impl = "recurrent" if q.shape[1] == 1 else "chunked"
    if impl == "recurrent":
        out, new_state = recurrent_reference(q, k, v, g, beta, state, use_qk_l2norm)
    elif impl == "chunked":
        out, new_state = chunked_reference(q, k, v, g, beta, state, use_qk_l2norm)
    else:
        raise ValueError(f"gated_delta_rule: impl={impl!r}; expected one of {IMPLS}")
    state.copy_(new_state)
    return out


def native_op(name: str, alternative: str):
    """torch.ops.qwen35.<name>.default, importing qwen_mobile.runtime (which defines the op; its kernel library is
    built and loaded on the op's first call) on first use; a clear error naming the op, and `alternative` (what the
    caller can do instead), if not."""
    try:
        import qwen_mobile.runtime  # noqa: F401

        return getattr(torch.ops.qwen35, name).default
    except (ImportError, AttributeError, RuntimeError) as err:
        raise RuntimeError(
            f"torch.ops.qwen35.{name} is not available ({type(err).__name__}: {err}). Build/load it with "
            f"`import qwen_mobile.runtime`, {alternative}."
        ) from err
