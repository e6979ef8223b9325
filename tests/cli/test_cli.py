"""`qwen-mobile run / chat / bench / inspect` end to end on the session's nano bundle, in-process."""

import io
import json

import numpy as np
import pytest
import torch

from qwen_mobile.export.cli import main
from qwen_mobile.runtime.contract import DECODE_METHOD, TOKEN_METHODS
from qwen_mobile.runtime.bench import load_results, validate_bench
from qwen_mobile.runtime.bundle import BundleError


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_run_json_and_dumped_logits_match_the_program(nano_bundle, bundle, capsys, tmp_path):
    dump = tmp_path / "steps.npy"
    doc = run_json(capsys, "run", str(nano_bundle), "--prompt", "def add(a, b):", "--max-new-tokens", "12",
                   "--json", "-", "--dump-logits", str(dump))
    logits = np.load(dump)
    assert logits.shape == (len(doc["ids"]), bundle.vocab_size)
    # Independent of the session code: drive the program's methods directly.
    program = bundle.program
    expect = [program.prefill(doc["prompt_ids"], 0)]
    for i, tok in enumerate(doc["ids"][:-1]):
        expect.append(program.decode(tok, len(doc["prompt_ids"]) + i))
    torch.testing.assert_close(torch.from_numpy(logits), torch.stack(expect), atol=0, rtol=0)
    assert doc["ids"] == [int(x) for x in logits.argmax(-1)]  # greedy by default
    assert doc["text"] == bundle.tokenizer.decode(doc["ids"], skip_special_tokens=False)
    assert doc["bundle_hash"] == bundle.hash and doc["generated_tokens"] == len(doc["ids"])


def test_run_refuses_an_overlong_prompt_unless_asked_to_truncate(nano_bundle, capsys):
    ids = ",".join(str(i) for i in range(100, 400))  # 300 tokens > context 256
    assert main(["run", str(nano_bundle), "--prompt-ids", ids]) == 1
    assert "exceeds the bundle's context of 256 tokens" in capsys.readouterr().err
    doc = run_json(capsys, "run", str(nano_bundle), "--prompt-ids", ids, "--truncate", "left",
                   "--max-new-tokens", "6", "--json", "-")
    assert doc["prompt_ids"] == list(range(150, 400))  # the last 256 - 6 tokens
    assert doc["generated_tokens"] == 6


def greedy_ids(bundle, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens straight from the program's methods (no session, no sampler), ending after a stop id."""
    program, ids = bundle.program, []
    logits = program.prefill(prompt_ids, 0)
    while len(ids) < n:
        ids.append(int(logits.argmax()))
        if ids[-1] in bundle.stop_ids:
            break
        logits = program.decode(ids[-1], len(prompt_ids) + len(ids) - 1)
    return ids


def test_run_sampling_follows_temperature_and_seed(nano_bundle, bundle, capsys):
    """Holds for any correct seeded sampler: a seed reproduces its tokens, other seeds give other tokens, sampling
    at temperature 1 leaves the greedy path, and temperature 0 is greedy whatever the seed and top-p."""
    argv = ["run", str(nano_bundle), "--prompt", "import", "--top-p", "0.9", "--max-new-tokens", "16", "--json", "-"]
    sampled = {seed: run_json(capsys, *argv, "--temperature", "1.0", "--seed", str(seed)) for seed in (1, 2, 3, 4)}
    again = run_json(capsys, *argv, "--temperature", "1.0", "--seed", "1")
    cold = run_json(capsys, *argv, "--temperature", "0", "--seed", "1")
    greedy = greedy_ids(bundle, cold["prompt_ids"], 16)
    assert cold["ids"] == greedy, "--temperature 0 did not give the greedy tokens"
    assert again["ids"] == sampled[1]["ids"], "the same --seed gave different tokens"
    assert sampled[1]["sampling"]["seed"] == 1 and sampled[1]["sampling"]["temperature"] == 1.0
    # After "import" nano's next token is far from certain (measured: the 4 seeds' first tokens all differ), so any
    # correct sampler gives 4 different 16-token continuations, none of them the greedy one.
    runs = {tuple(doc["ids"]) for doc in sampled.values()}
    assert len(runs) == 4, f"4 seeds gave {len(runs)} different continuations: --seed ignored?"
    assert tuple(greedy) not in runs, "sampling at temperature 1 gave the greedy tokens: --temperature ignored?"


def test_chat_save_load_reset_transcript(nano_bundle, monkeypatch, capsys, tmp_path):
    script = "def add(a, b):\n/save t1\nclass Stack:\n/load t1\nclass Stack:\n/load other\n/reset\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", str(nano_bundle), "--system", "You write Python.", "--max-new-tokens", "20",
                 "--snapshot-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    replies = [chunk.split("\n> ")[0] for chunk in out.split("> class Stack:\n")[1:]]
    assert len(replies) == 2 and replies[0] == replies[1], "the reply after /load differs from the first one"
    assert (tmp_path / "t1.safetensors").is_file()
    assert "no such file" in err and "[reset to position" in err


def test_bench_json_validates_plots_and_compares(nano_bundle, capsys, tmp_path):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", str(nano_bundle), "--prompt-lengths", "16,48", "--gen", "8", "--runs", "2",
                 "--warmup", "0", "--json", str(out), "--plot", str(png)]) == 0
    [result] = load_results(out)
    assert [r["prompt_tokens"] for r in result["results"]] == [16, 48]
    for r in result["results"]:
        assert len(r["samples"]) == 2
        assert all(len(s["decode_ms_per_token"]) == 7 for s in r["samples"])  # 8 tokens = 1 from prefill + 7 steps
        assert r["prefill_tok_s"]["p10"] <= r["prefill_tok_s"]["median"] <= r["prefill_tok_s"]["p90"]
    assert png.stat().st_size > 10_000
    # A saved result is a valid TARGET next to nothing else; the table shows it.
    capsys.readouterr()
    assert main(["bench", str(out), str(out)]) == 0
    assert "pp x1.00" in capsys.readouterr().out
    broken = dict(result)
    del broken["device"]
    with pytest.raises(BundleError, match="'device' is a required property"):
        validate_bench(broken)
    negative = json.loads(json.dumps(result))
    negative["results"][0]["samples"][0]["ttft_ms"] = -1.0
    with pytest.raises(BundleError, match="field 'results/0/samples/0/ttft_ms'"):
        validate_bench(negative)


def test_bench_refuses_lengths_that_do_not_fit(nano_bundle, capsys):
    assert main(["bench", str(nano_bundle), "--prompt-lengths", "250", "--gen", "64"]) == 1
    assert "does not fit the bundle's context of 256" in capsys.readouterr().err


def test_inspect_reads_our_op_from_the_program(nano_bundle, bundle, capsys):
    doc = run_json(capsys, "inspect", str(nano_bundle), "--json")
    delta_layers = sum(t == "linear_attention" for t in bundle.manifest["model"]["config"]["layer_types"])
    for method in TOKEN_METHODS:
        info = doc["program"]["methods"][method]
        assert info["ops_outside"].get("qwen35::gated_delta_rule") == delta_layers
        assert info["backends"].get("XnnpackBackend", 0) > 0
    assert set(doc["program"]["methods"]) >= {"forward", DECODE_METHOD, "state_read", "state_write"}
    assert main(["inspect", str(nano_bundle)]) == 0
    assert "qwen35::gated_delta_rule" in capsys.readouterr().out


def test_demo_runs_its_four_steps_with_every_export_flag(monkeypatch, tmp_path):
    """The demo drives the real export command: the export it asks for has the parser's defaults for every flag
    (a flag added to `export` but not to the demo once broke the README's first command). The slow steps are stubbed."""
    import qwen_mobile.export.recipes as recipes
    import qwen_mobile.runtime.commands as commands
    from qwen_mobile.export import cli
    from qwen_mobile.export.cli import export_command, model_commands

    seen = {}
    monkeypatch.setattr(model_commands, "cmd_check", lambda a: seen.setdefault("check", a.source) and 0)
    monkeypatch.setattr(recipes, "run_export",
                        lambda recipe, source, out, **kw: seen.setdefault("export", (recipe, source, out, kw)) and {})
    monkeypatch.setattr(export_command, "export_summary", lambda manifest, out: "")
    monkeypatch.setattr(commands, "cmd_run", lambda a: seen.setdefault("run", a.bundle) and 0)
    monkeypatch.setattr(commands, "cmd_bench", lambda a: seen.setdefault("bench", a.targets) and 0)
    out = str(tmp_path / "demo")
    assert cli.main(["demo", "--out", out]) == 0
    recipe, source, export_out, kw = seen["export"]
    assert (source, export_out, seen["check"]) == ("nano", out, "nano")
    assert recipe.settings.preset == "xnnpack-8da4w" and kw["force"] is True
    # The parser's defaults for every other flag: none of them counts as given.
    assert not [k for k, origin in recipe.settings.origin.items() if origin.startswith("--")], recipe.settings.origin
    assert seen["run"] == out and list(seen["bench"]) == [out]
