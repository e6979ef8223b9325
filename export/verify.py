"""The export gate: the `.pte` against eager fp32 on a fixed prompt, and the graph checks.

The program and the eager model see the same tokens: a fixed prompt prefilled in two uneven chunks (so the dynamic
prefill method runs twice and carries state between calls), then `steps` decode steps fed with eager fp32's greedy
tokens (teacher forcing), so one early disagreement cannot snowball into unrelated comparisons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from qwen_mobile.runtime.images import splice_image_embeddings

# fp32 recipe: same math as eager up to op ordering inside XNNPACK. Scaled by the logits' magnitude when it exceeds 1,
# since fp32 round-off grows with it.
FP32_MAX_ABS_LOGIT_DIFF = 1e-4


@dataclass
class VerifyResult:
    steps: int
    max_abs_logit_diff: float
    top1_agreement: float
    top5_overlap: float
    mean_kl: float
    greedy_identical: bool
    passed: bool
    gate: str

    def as_dict(self) -> dict:
        return asdict(self)


class VerificationError(RuntimeError):
    """The exported artifact disagreed with eager fp32 beyond its recipe's gate; nothing was written."""

    def __init__(self, what: str, result: VerifyResult, full_precision: bool):
        numbers = (f"top-1 agreement {result.top1_agreement:.1%}, mean KL {result.mean_kl:.3g}, "
                   f"max |logit diff| {result.max_abs_logit_diff:.3g}, greedy tokens "
                   f"{'identical' if result.greedy_identical else 'different'} over {result.steps} steps")
        advice = ("a full-precision bundle that disagrees with eager is a bug: please report it with this line"
                  if full_precision else
                  "for random or untrained weights pass --quality-gate off; for full precision use --preset "
                  "xnnpack-fp32 (or --qlinear fp32)")
        super().__init__(f"{what} verification failed, gate '{result.gate}': {numbers}; nothing written. {advice}")
        self.result = result


def fixed_prompt(vocab_size: int, tokenizer=None, length: int = 40) -> list[int]:
    if tokenizer is not None:
        text = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) >= 8:
            return ids[:length]
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab_size, (length,), generator=gen).tolist()


@dataclass
class EagerReference:
    """Eager fp32's greedy run on the fixed prompt: the tokens it fed and its logits at every step."""

    prompt: list[int]
    fed_tokens: list[int]  # the decode inputs, eager's own greedy choices
    logits: torch.Tensor  # [steps+1, vocab]: after the prompt, then after each fed token


@torch.no_grad()
def eager_reference(eager, prompt: list[int], steps: int = 32) -> EagerReference:
    """Run eager once, teacher-forcing itself. Taken before quantization so the exporter can quantize the very same
    model in place instead of holding an fp32 copy beside it (a 0.8B model is 3 GB in fp32)."""
    eager.reset()
    ref = [eager(torch.tensor([prompt]), torch.arange(len(prompt)))[0, -1]]
    fed, pos = [], len(prompt)
    for _ in range(steps):
        fed.append(int(ref[-1].argmax()))
        ref.append(eager(torch.tensor([[fed[-1]]]), torch.tensor([pos]))[0, -1])
        pos += 1
    eager.reset()
    return EagerReference(list(prompt), fed, torch.stack(ref).float())


def compare_with_eager(program, eager, prompt: list[int], steps: int = 32) -> dict:
    """Per-step logits of program vs eager (teacher-forced on eager's greedy tokens)."""
    return compare_with_reference(program, eager_reference(eager, prompt, steps))


@dataclass
class EagerImageReference:
    """Eager fp32's greedy run on the fixed image prompt (CONTRACT.md, "Images"): the image, the prompt with its
    span, the positions, the tokens it fed and its logits at every step."""

    rgb: torch.Tensor  # uint8 [H,W,3], the encode_image method's input
    method: str  # encode_image_<H>x<W>
    grid: tuple[int, int, int]  # (1, gh, gw) patches
    prompt: list[int]  # with vision_start, image_token_id x tokens, vision_end
    rope_pos: torch.Tensor  # [3,T]
    next_rope: int  # the rotary position of the first decoded token
    fed_tokens: list[int]
    logits: torch.Tensor  # [steps+1, vocab]


IMAGE_QUESTION = "What is in this picture? Answer in one sentence."


def image_prompt(vision, tokens: int, vocab_size: int, tokenizer=None) -> list[int]:
    """The gate's image prompt: a ChatML user turn holding the image's span before a short question (as Qwen's chat
    template writes it) with a tokenizer; without one, fixed random text ids (no vision ids) around the span.

    vision: the tower's config (token ids); tokens: the image's placeholder count."""
    span = [vision.vision_start_token_id] + [vision.image_token_id] * tokens + [vision.vision_end_token_id]
    if tokenizer is not None:
        def encode(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False).ids

        head, tail = encode("<|im_start|>user\n"), encode(f"{IMAGE_QUESTION}<|im_end|>\n<|im_start|>assistant\n")
        if head and tail:
            return head + span + tail
    special = {vision.image_token_id, vision.video_token_id, vision.vision_start_token_id, vision.vision_end_token_id}
    gen = torch.Generator().manual_seed(4321)
    text = [t for t in torch.randint(0, vocab_size, (40,), generator=gen).tolist() if t not in special]
    return text[:5] + span + text[5:15]


@torch.no_grad()
def eager_image_reference(vision_language, processor, rgb: torch.Tensor, method: str, prompt: list[int],
                          steps: int) -> EagerImageReference:
    """models/vision_language.Qwen35VisionLanguage on the prompt with one image (fp32, before quantization), then
    `steps` greedy tokens teacher-forcing itself, as eager_reference does for text."""
    from qwen_mobile.models.vision_language import mrope_positions
    from qwen_mobile.models.vision_preprocess import normalize, patchify

    vl = vision_language
    patches, gh, gw = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)  # [H,W,3] -> [3,H,W]
    grid = (1, gh, gw)
    rope_pos, next_rope = mrope_positions(prompt, [grid], vl.image_token_id, vl.visual.config.spatial_merge_size)
    ref = [vl.prefill(prompt, patches, [grid])[0, -1]]
    fed = []
    for _ in range(steps):
        fed.append(int(ref[-1].argmax()))
        ref.append(vl.decode(fed[-1])[0, -1])
    vl.text.reset()
    return EagerImageReference(rgb, method, grid, list(prompt), rope_pos, next_rope, fed, torch.stack(ref).float())


@torch.no_grad()
def compare_image_with_reference(program, reference: EagerImageReference, image_token_id: int) -> dict:
    """The bundle through CONTRACT.md's steps (encode_image, embed_tokens, splice, prefill_embeddings in two uneven
    chunks split inside the image's span, decode_token_rope teacher-forced on eager's tokens) vs eager's logits.

    program: runtime.program.BundleProgram."""
    prompt = reference.prompt
    image = program.encode_image(reference.method, reference.rgb)  # [N,hidden]
    embeds = splice_image_embeddings(program.embed(prompt), prompt, image, image_token_id)  # [T,hidden]
    split = prompt.index(image_token_id) + max(1, image.shape[0] // 2)  # the second chunk starts inside the image
    program.prefill_embeddings(embeds[:split], 0, reference.rope_pos[:, :split])
    got = [program.prefill_embeddings(embeds[split:], split, reference.rope_pos[:, split:])]
    for k, token in enumerate(reference.fed_tokens):
        got.append(program.decode_rope(token, len(prompt) + k, reference.next_rope + k))
    return logit_metrics(reference.logits, torch.stack(got).float())


@torch.no_grad()
def compare_with_reference(program, reference: EagerReference) -> dict:
    """Feed `program` the reference's prompt (two uneven prefill chunks) and tokens; compare logits step by step."""
    prompt = reference.prompt
    split = max(1, len(prompt) // 3)  # two uneven chunks through `forward`
    if split < len(prompt):
        program.prefill(prompt[:split], 0)
        got = [program.prefill(prompt[split:], split)]
    else:
        got = [program.prefill(prompt, 0)]
    for i, token in enumerate(reference.fed_tokens):
        got.append(program.decode(token, len(prompt) + i))
    return logit_metrics(reference.logits, torch.stack(got).float())


def logit_metrics(ref_t: torch.Tensor, got_t: torch.Tensor) -> dict:
    """Per-step logits [steps+1, vocab] of eager and of the program -> the numbers `gate` judges."""
    log_p, log_q = torch.log_softmax(ref_t, -1), torch.log_softmax(got_t, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL(eager || program) per step
    top5_ref = ref_t.topk(5, -1).indices
    top5_got = got_t.topk(5, -1).indices
    overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(top5_ref, top5_got)])
    return dict(
        steps=len(ref_t),
        max_abs_logit_diff=float((ref_t - got_t).abs().max()),
        max_abs_logit=float(ref_t.abs().max()),
        top1_agreement=float((ref_t.argmax(-1) == got_t.argmax(-1)).float().mean()),
        top5_overlap=float(overlap.mean()),
        mean_kl=float(kl.mean()),
        greedy_identical=bool((ref_t.argmax(-1) == got_t.argmax(-1)).all()),
        finite=bool(torch.isfinite(got_t).all()),
    )


def gate(metrics: dict, qlinear: str, qembedding: str, floors: dict, quality_gate: bool) -> VerifyResult:
    """fp32: logits within FP32_MAX_ABS_LOGIT_DIFF. Quantized: top-1 agreement and KL floors from the preset."""
    full_precision = qlinear == "fp32" and qembedding == "none"
    if not metrics["finite"]:
        passed, rule = False, "non-finite logits"
    elif full_precision:
        bound = floors.get("max_abs_logit_diff", FP32_MAX_ABS_LOGIT_DIFF) * max(1.0, metrics["max_abs_logit"])
        passed = metrics["max_abs_logit_diff"] <= bound and metrics["greedy_identical"]
        rule = f"max |logit diff| <= {bound:.3g} (1e-4 x max(1, max |logit|)) and identical greedy tokens"
    elif not quality_gate:
        passed, rule = True, "quality gate off (random or untrained weights): finite logits only"
    else:
        top1, kl = floors.get("min_top1_agreement", 0.0), floors.get("max_mean_kl", float("inf"))
        passed = metrics["top1_agreement"] >= top1 and metrics["mean_kl"] <= kl
        rule = f"top-1 agreement >= {top1:g} and mean KL <= {kl:g}"
    keys = ("steps", "max_abs_logit_diff", "top1_agreement", "top5_overlap", "mean_kl", "greedy_identical")
    return VerifyResult(**{k: metrics[k] for k in keys}, passed=passed, gate=rule)


def op_nodes_per_method(programs: dict) -> dict[str, int]:
    """Count qwen35::gated_delta_rule nodes in each exported (pre-lowering) program."""
    counts = {}
    for name, ep in programs.items():
        counts[name] = sum(1 for n in ep.graph.nodes if n.op == "call_function" and "gated_delta_rule" in str(n.target))
    return counts
