"""The iOS ExecuTorch engine's fallback: on a Module that gives each method its own state, every token goes through
`forward` (dynamic T, so T = 1 with decode_token's inputs). Its logits must be decode_token's: the same graph up to
the chunked delta rule's T = 1 path, checked here on the program both engines run."""

import torch

# Same weights and state, two graphs: forward's T = 1 goes through the chunked recurrence's one-token case and its
# own XNNPACK partitions, so only accumulation order differs (the fp32 gate's bound).
REL_TOL = 1e-4


def test_decode_through_forward_equals_decode_token(bundle):
    program = bundle.program
    prompt = bundle.encode("def fibonacci(n):\n    if n < 2:\n")
    steps = [int(t) for t in torch.randint(0, bundle.vocab_size, (12,), generator=torch.Generator().manual_seed(3))]

    program.prefill(prompt, 0)
    through_decode = [program.decode(t, len(prompt) + i) for i, t in enumerate(steps)]
    program.prefill(prompt, 0)  # position 0 resets the state
    through_forward = [program.prefill([t], len(prompt) + i) for i, t in enumerate(steps)]

    for i, (a, b) in enumerate(zip(through_decode, through_forward)):
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= REL_TOL * scale, f"step {i}"
        assert int(a.argmax()) == int(b.argmax()), f"step {i}"
    # The steps really moved the state: the logits differ from one step to the next.
    assert len({int(x.argmax()) for x in through_decode}) > 1 or \
        (through_decode[0] - through_decode[-1]).abs().max() > 1e-3
