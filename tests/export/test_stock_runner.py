"""ExecuTorch's stock LLM runner (executorch.extension.llm.runner.TextLLMRunner) on our .pte once our kernel library
is loaded: it reads our metadata methods and prefills with `forward`. It would decode with a method named `decode` if
the program had one (1.5), on memory that method does not share with `forward`; ours is named `decode_token`, so the
runner drives `forward` for every step."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from checkpoints import make_hf_causal_lm
from qwen_mobile.export import export
from qwen_mobile.models import Qwen35ForCausalLM
from qwen_mobile.runtime.contract import DECODE_METHOD

CODE = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n",
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n"] * 20


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # ASCII bytes only: every token then decodes to valid UTF-8 on its own, which the runner's streaming
    # callback needs (a lone byte >= 0x80 makes it raise UnicodeDecodeError).
    ascii_alphabet = [pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(chr(b))[0][0]
                      for b in range(128)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=ascii_alphabet, limit_alphabet=130)
    tok.train_from_iterator(CODE, trainer)
    return tok


@pytest.fixture(scope="module")
def bundle_with_tokenizer(tmp_path_factory):
    tok = train_tokenizer(300)
    vocab = tok.get_vocab_size()
    hf = make_hf_causal_lm("hv1x", True, seed=11, vocab_size=vocab, eos_token_id=tok.token_to_id("<|im_end|>"))
    with torch.no_grad():
        for p in hf.parameters():  # at init scale a random model repeats one token; larger weights vary it
            if p.dim() == 2:
                p.mul_(4.0)
    src = tmp_path_factory.mktemp("src")
    hf.save_pretrained(src)
    tok.save(str(src / "tokenizer.json"))
    out = tmp_path_factory.mktemp("bundles") / "stock"
    export(str(src), out, preset="xnnpack-fp32", max_seq_len=96, max_prefill_chunk=32, progress=False)
    return src, out, tok


def test_stock_runner_loads_our_pte_and_its_first_token_is_our_greedy_token(bundle_with_tokenizer):
    """The runner finds our metadata, loads `forward` with our kernel and prefills the prompt exactly."""
    import qwen_mobile.runtime  # noqa: F401
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    src, out, tok = bundle_with_tokenizer
    prompt = "def add(a, b):\n"
    eager = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=96, gdn_impl="reference")
    expected = eager.generate(tok.encode(prompt).ids, max_new_tokens=1)
    pieces: list[str] = []
    runner = TextLLMRunner(str(out / "model.pte"), str(out / "tokenizer.json"))
    runner.generate(prompt, GenerationConfig(max_new_tokens=4, temperature=0.0, echo=False, seq_len=96),
                    token_callback=pieces.append)
    assert pieces[0] == tok.decode(expected)


def test_stock_text_llm_runner_generates_our_greedy_tokens(bundle_with_tokenizer):
    """The bundle as exported, no edits: every generated token is eager greedy (export/README.md, 'Stock runner')."""
    import qwen_mobile.runtime  # noqa: F401  (our kernel must be registered before the runner loads the program)
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from executorch.runtime import Runtime

    src, out, tok = bundle_with_tokenizer
    # A method named `decode` is what the runner would switch to after the first token (on state it cannot see).
    names = set(Runtime.get().load_program(str(out / "model.pte")).method_names)
    assert "decode" not in names and {"forward", DECODE_METHOD} <= names
    prompt = "def add(a, b):\n"
    prompt_ids = tok.encode(prompt).ids
    eager = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=96, gdn_impl="reference")
    expected = eager.generate(prompt_ids, max_new_tokens=12)

    pieces: list[str] = []
    runner = TextLLMRunner(str(out / "model.pte"), str(out / "tokenizer.json"))
    config = GenerationConfig(max_new_tokens=12, temperature=0.0, echo=False, seq_len=96)
    runner.generate(prompt, config, token_callback=pieces.append)
    assert len(set(expected)) >= 3, f"degenerate reference {expected}: pick another seed"
    # The runner streams one decoded piece per token; compare piece by piece.
    assert pieces == [tok.decode([t]) for t in expected]

