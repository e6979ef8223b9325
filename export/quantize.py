"""Weight quantization with torchao, as pure `module -> module` transforms.

Linear schemes (flag `--qlinear`, names as in optimum-executorch):
    fp32   no quantization
    8da4w  int8 dynamic per-token activations, int4 symmetric group-wise weights (XNNPACK qd8-f32-qb4w)
    8da8w  int8 dynamic activations, int8 per-channel weights (qd8-f32-qc8w)
    8w     int8 per-channel weight-only     our qwen35::linear_wq kernel (runtime/wq.py), fp32 activations
    4w     int4 group-wise weight-only      our qwen35::linear_wq kernel
Embedding schemes (`--qembedding`): none, 8w (int8 per-row), 4w (int4 group-wise), through our
qwen35::embedding_wq kernel.

The tied table (`--tied-table`, default `once`). Qwen3.5's small sizes tie lm_head to the embedding, and that table is
a third of the 0.8B model (248,320 x 1,024). When the embedding is quantized (8w/4w), the embedding and lm_head hold
the SAME qweight/scales tensors, so the program stores the table once (`tied_table_copies: 1`): lm_head then reads the
table at the embedding's precision, through qwen35::linear_wq_a8 (int8 activations per group, integer dot products)
when `--qlinear` is an 8da scheme, so the head keeps the recipe's "8-bit dynamic activations", and through
qwen35::linear_wq (fp32 activations) otherwise.
`--tied-table twice` keeps the 8da schemes' head inside XNNPACK and gives the embedding its own copy (torchao's
quantized embedding), which is how the table was stored before; bench/README.md measures both. With `--qembedding
none` the head follows `--qlinear` and the table is stored twice whenever either side is quantized.

Weight-only quantization math (`quantize_weight`): symmetric round-to-nearest per group (per row for 8w),
scale = max|w| / qmax with qmax 127 (int8) or 7 (int4), q = clamp(round(w / scale), -qmax, qmax). The int4 range is
[-7, 7], not [-8, 7]: with scale = max|w|/7 the largest weight lands exactly on +-7 and the code is symmetric in sign;
using -8 would need scale = max|w|/8 (clipping the positive side) or an asymmetric grid, for 1/16 more resolution.

The delta-net's tiny projections (in_proj_b, in_proj_a: [n_v, h]) are quantized like every other linear whose input
width is a multiple of the group size; anything else stays fp32 and is listed in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qwen_mobile.runtime.contract import TOKEN_METHODS

QLINEAR = ("fp32", "8da4w", "8da8w", "8w", "4w")
QEMBEDDING = ("none", "8w", "4w")
GROUP_SIZES = (32, 64, 128)
TIED_TABLE = ("once", "twice")


@dataclass
class QuantReport:
    qlinear: str
    qembedding: str
    group_size: int
    quantized_linears: int = 0
    skipped_linears: list[str] = field(default_factory=list)
    embedding: str = "fp32"
    tied_table_copies: int = 1
    head: str = "fp32"  # how lm_head is computed, e.g. "4w linear_wq, the embedding's table"
    wq_linears: int = 0  # linears on qwen35::linear_wq (checked against the exported graph)
    wq_a8_linears: int = 0  # linears on qwen35::linear_wq_a8: the shared head of the 8da recipes
    wq_embedding: bool = False  # embedding on qwen35::embedding_wq
    kept_linears: list[str] = field(default_factory=list)  # left in fp32 on purpose (`keep`), with the reason


def _linear_config(scheme: str, group_size: int):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    if scheme == "8da8w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if scheme == "8w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == "4w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise ValueError(f"--qlinear {scheme!r}: expected one of {QLINEAR}")


def _embedding_config(scheme: str, group_size: int):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == "4w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise ValueError(f"--qembedding {scheme!r}: expected one of {QEMBEDDING}")


WEIGHT_ONLY_BITS = {"8w": 8, "4w": 4}
# Scales are stored in float16 (2 B per group: 0.5 bit per weight at 4w g32 instead of 1 bit in float32) whenever
# every scale of the tensor is a normal float16 number; a tensor with a scale outside [2^-14, 65504] keeps float32
# scales rather than lose precision in subnormals. The rounded fp16 scale is the one the codes are computed against.
FP16_SCALE_RANGE = (2.0 ** -14, 65504.0)


@torch.no_grad()
def quantize_weight(w: torch.Tensor, bits: int, group_size: int,
                    rows_per_chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (qweight, scales) in qwen35::linear_wq's layout (runtime/wq.py).

    bits=8: qweight int8 [N, K]; bits=4: uint8 [N, K/2], element 2j in the low nibble of byte j, 2j+1 in the high
    one, each stored as q + 8. scales [N, K/group_size].

    Rows are processed `rows_per_chunk` at a time: the 0.8B table (248,320 x 1,024) would otherwise need several
    1 GB float temporaries at once, which set the export's peak RSS. Chunking changes no value.
    """
    N, K = w.shape
    if K % group_size or (bits == 4 and group_size % 2):
        raise ValueError(f"quantize_weight: group_size {group_size} must divide K={K} (and be even for 4 bits)")
    qmax = 127 if bits == 8 else 7
    chunks = range(0, N, rows_per_chunk)

    def groups_of(i: int) -> torch.Tensor:
        return w[i:i + rows_per_chunk].detach().float().reshape(-1, K // group_size, group_size)  # [n, G, gs]

    amax = torch.cat([groups_of(i).abs().amax(-1) for i in chunks])  # [N, G]
    scales = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # all-zero group: any scale, q = 0
    lo, hi = FP16_SCALE_RANGE
    if bool(((scales >= lo) & (scales <= hi)).all()):
        scales = scales.to(torch.float16)
    qweight = torch.empty((N, K if bits == 8 else K // 2), dtype=torch.int8 if bits == 8 else torch.uint8)
    for i in chunks:
        q = torch.clamp(torch.round(groups_of(i) / scales[i:i + rows_per_chunk, :, None].float()), -qmax, qmax)
        q = q.to(torch.int8).reshape(-1, K)  # [n, K]
        if bits == 8:
            qweight[i:i + rows_per_chunk] = q
        else:
            u = (q + 8).to(torch.uint8)  # offset binary nibbles, 1..15
            qweight[i:i + rows_per_chunk] = u[:, 0::2] | (u[:, 1::2] << 4)
    return qweight, scales.contiguous()


class LinearWQ(nn.Module):
    """nn.Linear replaced by qwen35::linear_wq over packed weights (buffers `qweight`, `scales`)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.qwen35.linear_wq(x, self.qweight, self.scales, self.bits, self.group_size)  # [..., N]
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"out={self.qweight.shape[0]}, bits={self.bits}, group_size={self.group_size}"


class LinearWQA8(LinearWQ):
    """LinearWQ whose activations are quantized to int8 per group inside the op (qwen35::linear_wq_a8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.qwen35.linear_wq_a8(x, self.qweight, self.scales, self.bits, self.group_size)  # [..., N]
        return y if self.bias is None else y + self.bias


class EmbeddingWQ(nn.Module):
    """nn.Embedding replaced by qwen35::embedding_wq over packed rows (may share its buffers with a LinearWQ)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int):
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.ops.qwen35.embedding_wq(self.qweight, self.scales, indices, self.bits, self.group_size)

    def extra_repr(self) -> str:
        return f"rows={self.qweight.shape[0]}, bits={self.bits}, group_size={self.group_size}"


def _set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent, _, name = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _kept(fqn: str, keep: dict[str, str], report: "QuantReport") -> bool:
    """Whether `fqn` stays fp32 because `keep` names it (or a module above it); recorded with the reason."""
    for prefix, why in keep.items():
        if fqn == prefix or fqn.startswith(prefix + "."):
            report.kept_linears.append(f"{fqn} ({why})")
            return True
    return False


def _quantize_weight_only(model: nn.Module, report: "QuantReport", embed, lm_head, tied: bool,
                          keep: dict[str, str]) -> None:
    """`--qlinear 8w|4w`: every eligible nn.Linear (and the embedding, if asked) onto our qwen35 ops."""
    import qwen_mobile.runtime.wq  # noqa: F401  defines torch.ops.qwen35.linear_wq / embedding_wq

    bits, gs = WEIGHT_ONLY_BITS[report.qlinear], report.group_size
    shared = None  # (qweight, scales, bits, group) of a tied table quantized once for both sides
    if embed is not None and report.qembedding != "none":
        table = _quantize_embedding(model, report, embed)
        if tied and report.qembedding == report.qlinear:
            shared = table
    for fqn, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or _kept(fqn, keep, report):
            continue
        group = module.in_features if bits == 8 else gs  # int8: per channel
        if module.in_features % group:
            report.skipped_linears.append(f"{fqn} (in_features {module.in_features} % group {group})")
            continue
        if module is lm_head and shared is not None:
            new = LinearWQ(*shared, module.bias)  # the embedding's tensors
        else:
            new = LinearWQ(*quantize_weight(module.weight, bits, group), bits, group, module.bias)
        _set_submodule(model, fqn, new)
        report.quantized_linears += 1
        report.wq_linears += 1
        if module is lm_head:
            report.head = f"{report.qlinear} linear_wq" + (", the embedding's table" if shared else "")
    if tied:
        quantized_sides = (lm_head is not None and not isinstance(model.get_submodule("lm_head"), nn.Linear),
                           report.embedding != "fp32")
        report.tied_table_copies = 1 if shared is not None or not any(quantized_sides) else 2


def check_weight_only_nodes(programs: dict, report: "QuantReport", methods=TOKEN_METHODS) -> dict:
    """Count qwen35.linear_wq / linear_wq_a8 / embedding_wq nodes per exported method; raise if any quantized module
    lost its op.

    Expected per method: one linear_wq (linear_wq_a8) per quantized linear on it, one embedding_wq if the embedding was
    quantized with our op. A missing node means the graph silently computes something else (e.g. a decomposed
    fallback). methods: names of methods that run every module, or {name: (runs the linears, runs the embedding)}
    for methods that run only part of the model (embed_tokens: the embedding; prefill_embeddings: the linears).
    """
    import re

    if not report.wq_linears and not report.wq_a8_linears and not report.wq_embedding:
        return {}
    parts = methods if isinstance(methods, dict) else {m: (True, True) for m in methods}

    def op_name(target) -> str | None:  # the exact op: "qwen35.linear_wq" is a prefix of "qwen35.linear_wq_a8"
        m = re.search(r"qwen35\.(\w+)", str(target))
        return m.group(1) if m else None

    counts = {}
    for method, (linears, embedding) in parts.items():
        want = {"linear_wq": report.wq_linears * linears, "linear_wq_a8": report.wq_a8_linears * linears,
                "embedding_wq": int(report.wq_embedding and embedding)}
        nodes = [n for n in programs[method].graph.nodes if n.op == "call_function"]
        got = {op: sum(1 for n in nodes if op_name(n.target) == op) for op in want}
        counts[method] = got
        if got != want:
            raise RuntimeError(f"export: method '{method}' has {got} qwen35 weight-only nodes, expected {want} (one "
                               "per quantized module); refusing to ship a graph without our kernels")
    return counts


@torch.no_grad()
def quantize_model(model: nn.Module, qlinear: str, qembedding: str, group_size: int,
                   tied_table: str = "once", keep: dict[str, str] | None = None) -> QuantReport:
    """Quantize `model` in place and return what was done. keep: linears (qualified names, or modules above them)
    that stay fp32 whatever `qlinear` says, each with the reason the report records."""
    from torchao.quantization import quantize_
    from torchao.utils import unwrap_tensor_subclass

    if qlinear not in QLINEAR:
        raise ValueError(f"--qlinear {qlinear!r}: expected one of {QLINEAR}")
    if qembedding not in QEMBEDDING:
        raise ValueError(f"--qembedding {qembedding!r}: expected one of {QEMBEDDING}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"--group-size {group_size}: expected one of {GROUP_SIZES}")
    if tied_table not in TIED_TABLE:
        raise ValueError(f"--tied-table {tied_table!r}: expected one of {TIED_TABLE}")
    report = QuantReport(qlinear, qembedding, group_size)
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    tied = lm_head is not None and embed is not None and lm_head.weight is embed.weight

    if qlinear in WEIGHT_ONLY_BITS:
        if qembedding not in ("none", *WEIGHT_ONLY_BITS):
            raise ValueError(f"--qembedding {qembedding!r} with --qlinear {qlinear}: expected none, 8w or 4w")
        _quantize_weight_only(model, report, embed, lm_head, tied, keep or {})
        _upcast_remaining(model)
        return report
    if tied and qembedding in WEIGHT_ONLY_BITS and tied_table == "once":
        _share_tied_table(model, report, embed, lm_head)  # lm_head leaves nn.Linear: torchao below skips it
    elif qembedding != "none":
        quantize_(model, _embedding_config(qembedding, group_size),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Embedding) and _upcast_weight(m))
        report.embedding = qembedding
    if qlinear != "fp32":
        grouped = qlinear in ("8da4w", "4w")

        def take_linear(module: nn.Module, fqn: str) -> bool:
            if not isinstance(module, nn.Linear) or _kept(fqn, keep or {}, report):
                return False
            if grouped and module.in_features % group_size:
                report.skipped_linears.append(f"{fqn} (in_features {module.in_features} % group {group_size})")
                return False
            report.quantized_linears += 1
            return _upcast_weight(module)

        quantize_(model, _linear_config(qlinear, group_size), filter_fn=take_linear)
        if report.head == "fp32" and lm_head is not None:
            report.head = f"{qlinear} XNNPACK"
    if tied and not report.wq_embedding and (qlinear != "fp32" or qembedding != "none"):
        # Quantizing either side gives each its own tensor: the table is now stored twice (in two formats).
        report.tied_table_copies = 2
    unwrap_tensor_subclass(model)
    _upcast_remaining(model)
    return report


def _upcast_weight(module: nn.Module) -> bool:
    """torchao quantizes in the weight's own dtype: give it the fp32 weight, one module at a time (a bf16-stored model,
    see models/weights.py keep_bf16, never exists in fp32 whole). Returns True so filters can end with it."""
    if module.weight.dtype == torch.bfloat16:
        module.weight.data = module.weight.data.float()
    return True


def _upcast_remaining(model: nn.Module) -> None:
    """Whatever stayed unquantized and bf16-stored (norms, an fp32 recipe's linears) is exported in fp32 (exact).
    Only bf16 tensors change: quantization's float16 scales are meant to stay float16."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dtype == torch.bfloat16:
            tensor.data = tensor.data.float()


def _quantize_embedding(model: nn.Module, report: QuantReport, embed: nn.Embedding) -> tuple:
    """The embedding onto qwen35::embedding_wq at `--qembedding`; returns (qweight, scales, bits, group)."""
    import qwen_mobile.runtime.wq  # noqa: F401  defines torch.ops.qwen35.linear_wq / embedding_wq

    bits = WEIGHT_ONLY_BITS[report.qembedding]
    group = embed.embedding_dim if bits == 8 else report.group_size  # int8: per row (= per output channel)
    qweight, scales = quantize_weight(embed.weight, bits, group)
    _set_submodule(model, next(n for n, m in model.named_modules() if m is embed),
                   EmbeddingWQ(qweight, scales, bits, group))
    report.embedding, report.wq_embedding = report.qembedding, True
    return qweight, scales, bits, group


def _share_tied_table(model: nn.Module, report: QuantReport, embed: nn.Embedding, lm_head: nn.Linear) -> None:
    """One quantized table for the embedding gather and the lm_head GEMV (our qwen35 ops), stored once.

    In the 8da recipes the head quantizes its activations to int8 per group like the recipe's other linears do
    (linear_wq_a8: integer dot products, the speed XNNPACK's own head has); otherwise (`--qlinear fp32`) it keeps fp32
    activations (linear_wq).
    """
    table = _quantize_embedding(model, report, embed)
    a8 = report.qlinear.startswith("8da")
    head = (LinearWQA8 if a8 else LinearWQ)(*table, lm_head.bias)
    _set_submodule(model, next(n for n, m in model.named_modules() if m is lm_head), head)
    if a8:
        report.wq_a8_linears = 1
    else:
        report.wq_linears = 1
    report.quantized_linears += 1
    report.head = (f"{report.qembedding} linear_wq_a8 (int8 activations per group), the embedding's table" if a8
                   else f"{report.qembedding} linear_wq, the embedding's table")
    report.tied_table_copies = 1
