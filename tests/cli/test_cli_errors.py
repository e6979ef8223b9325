"""What a user sees on bad input: one line naming the flag, file or field, the documented exit code (1, or 2 for
usage), and nothing lost or half-written. Each test runs the command as a user would (in-process through `main`, or
in a child process where the failure used to abort the interpreter or where a signal is involved)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoints import make_hf_causal_lm
from qwen_mobile.export.recipes import ExportSettings
from qwen_mobile.export.source import SHIPPED_MODELS
from qwen_mobile.export.cli import main
from qwen_mobile.runtime import bundle as bundle_mod
from qwen_mobile.runtime.errors import UsageError

CLI = [sys.executable, "-m", "qwen_mobile.export.cli"]


# torch's C++ log lines: severity letter, then the month and day ("W1203 22:52:37.431000 ..."): any date.
GLOG_PREFIX = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d")


def error_lines(text: str) -> list[str]:
    """The lines a user reads: without ExecuTorch's and torch's start-up chatter, which goes to stderr on import."""
    noise = ("I 00:", "Failed to load", "[cpuinfo", "[program.cpp", "  warnings.warn", "/")
    return [line for line in text.splitlines() if line.strip() and not line.startswith(noise)
            and not GLOG_PREFIX.match(line) and "UserWarning" not in line and "Warning:" not in line]


def one_error(capsys) -> str:
    lines = [line for line in error_lines(capsys.readouterr().err) if not line.startswith("  ")
             and not line.startswith("qwen-mobile export ") and "effective recipe" not in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- nothing lost ---------------------------------------------------------------------------------------------------

def test_force_never_deletes_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not a bundle")
    assert main(["export", "tiny", "--out", str(out), "--force"]) == 1
    line = one_error(capsys)
    assert f"--out {out} is not a qwen-mobile bundle" in line and "holiday.jpg" in line
    assert tree(out) == {"holiday.jpg": b"\xff\xd8 not a bundle"}


def test_force_never_deletes_files_a_bundle_does_not_list(nano_bundle, tmp_path, capsys):
    out = tmp_path / "bundle"
    shutil.copytree(nano_bundle, out)
    (out / "my-notes.txt").write_text("results of last week")
    before = tree(out)
    assert main(["export", "tiny", "--out", str(out), "--force"]) == 1
    assert "holds files its manifest does not list (e.g. 'my-notes.txt')" in one_error(capsys)
    assert tree(out) == before


@pytest.mark.parametrize("where", ["itself", "inside"])
def test_out_is_refused_at_or_inside_the_source_checkpoint(where, capsys):
    source = SHIPPED_MODELS["nano"]
    before = tree(source)
    out = source if where == "itself" else source / "bundle"
    assert main(["export", "nano", "--out", str(out), "--force"]) == 1
    assert f"is {'SOURCE itself' if where == 'itself' else 'inside SOURCE'}" in one_error(capsys)
    assert tree(source) == before


def test_an_unwritable_or_impossible_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import qwen_mobile.export.source as sources

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(sources, "load_model", must_not_load)
    (tmp_path / "a-file").write_text("x")
    assert main(["export", "tiny", "--out", str(tmp_path / "a-file" / "bundle")]) == 1
    assert "a-file is a file, not a folder" in one_error(capsys)
    # /proc takes no new entries, even from root (permission bits alone would not stop root).
    assert main(["export", "tiny", "--out", "/proc/qwen-mobile-test/bundle"]) == 1
    assert "--out /proc/qwen-mobile-test/bundle: cannot create anything in /proc" in one_error(capsys)


def test_a_failed_move_in_keeps_the_old_bundle(tmp_path, monkeypatch):
    """The old bundle is renamed aside, not deleted, until the new one is in place."""
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "qwen-mobile-bundle", "files": {"model.pte": {}}}))
    (out / "model.pte").write_bytes(b"old program")
    real_replace = os.replace

    def failing_move_in(src, dst):
        if Path(src).name.startswith(".bundle.partial-"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", failing_move_in)
    with pytest.raises(OSError, match="No space left"):
        with bundle_mod.staged_bundle(out, force=True) as staging:
            (staging / "model.pte").write_bytes(b"new program")
    assert (out / "model.pte").read_bytes() == b"old program"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging or aside folder left behind


def test_bundle_folders_get_the_users_folder_mode(nano_bundle):
    umask = os.umask(0)
    os.umask(umask)
    assert nano_bundle.stat().st_mode & 0o777 == 0o777 & ~umask


# -- chat survives its commands --------------------------------------------------------------------------------------

def test_a_failing_save_does_not_end_the_chat(nano_bundle, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    script = "/save first\ndef add(a, b):\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", str(nano_bundle), "--max-new-tokens", "5", "--snapshot-dir", str(blocker)]) == 0
    captured = capsys.readouterr()
    errors = [line for line in error_lines(captured.err) if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: /save: ") and "not-a-folder" in errors[0]
    # The conversation went on: the message after the failed /save got its reply.
    assert "> def add(a, b):" in captured.out
    assert any(line.startswith("[position ") for line in captured.err.splitlines())


def test_ctrl_c_during_a_reply_stops_the_reply_not_the_chat(nano_bundle, monkeypatch, capsys):
    from qwen_mobile.runtime.session import Session

    real_step, calls = Session.step, []

    def step_then_ctrl_c(self, token):
        calls.append(token)
        if len(calls) == 3:  # a real SIGINT, delivered while the first reply streams
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, token)

    monkeypatch.setattr(Session, "step", step_then_ctrl_c)
    monkeypatch.setattr("sys.stdin", io.StringIO("def add(a, b):\nclass Stack:\n/quit\n"))
    assert main(["chat", str(nano_bundle), "--max-new-tokens", "40"]) == 0
    err = capsys.readouterr().err
    timings = [line for line in err.splitlines() if line.startswith("[position ")]
    assert len(timings) == 2, err  # both messages got a reply
    assert "stop: cancelled" in timings[0] and "(stopped by Ctrl-C)" in timings[0]
    assert "cancelled" not in timings[1]


def test_chat_with_standard_input_closed_says_so(nano_bundle):
    proc = subprocess.run(CLI + ["chat", str(nano_bundle)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, preexec_fn=lambda: os.close(0), timeout=600)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == ["error: chat: standard input is closed; run it in a terminal, or pipe the "
                                        "messages in"]


# -- one line instead of a traceback ----------------------------------------------------------------------------------

def test_a_corrupt_program_run_without_verification_is_one_line(nano_bundle, tmp_path):
    """ExecuTorch's loader used to abort the interpreter here (terminate called ... UnicodeDecodeError)."""
    cases = {"garbage-header": lambda b: os.urandom(64) + b[64:],
             "truncated": lambda b: b[:len(b) // 3],
             "corrupt-program-table": lambda b: b[:64] + os.urandom(3000) + b[3064:]}
    expected = {"garbage-header": "not an ExecuTorch program", "truncated": "truncated: its header says",
                "corrupt-program-table": "ExecuTorch cannot load this program"}
    for name, corrupt in cases.items():
        out = tmp_path / name
        shutil.copytree(nano_bundle, out)
        (out / "model.pte").write_bytes(corrupt((out / "model.pte").read_bytes()))
        proc = subprocess.run(CLI + ["run", str(out), "--no-verify", "--prompt-ids", "1,2,3"], capture_output=True,
                              text=True, timeout=600)
        lines = error_lines(proc.stderr)
        assert proc.returncode == 1 and len(lines) == 1, (name, proc.returncode, proc.stderr[-2000:])
        assert lines[0].startswith(f"error: {out / 'model.pte'}: {expected[name]}"), (name, lines)


@pytest.mark.parametrize("field,edit,method", [
    ("state.max_seq_len", lambda m: m["state"].update(max_seq_len=4096), "get_max_context_len"),
    ("program.methods.forward.max_tokens", lambda m: m["program"]["methods"]["forward"].update(max_tokens=200),
     "get_max_seq_len"),
    ("tokenizer.stop_ids", lambda m: m["tokenizer"].update(stop_ids=[3]), "get_eos_ids"),
])
def test_a_manifest_that_disagrees_with_its_program_is_refused_at_load(nano_bundle, tmp_path, capsys, field, edit,
                                                                       method):
    out = tmp_path / "edited"
    shutil.copytree(nano_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["run", str(out), "--prompt-ids", "1,2,3", "--max-new-tokens", "2"]) == 1
    line = one_error(capsys)
    assert f"manifest.json: {field} is " in line and f"({method})" in line and "re-export" in line


@pytest.mark.parametrize("argv,flag", [
    (["run", "{b}", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["run", "{b}", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["chat", "{b}", "--max-new-tokens", "-5"], "--max-new-tokens"),
    (["generate", "nano", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["bench", "{b}", "--gen", "0"], "--gen"),
])
def test_token_counts_below_one_are_usage_errors(nano_bundle, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(b=nano_bundle) for a in argv])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["generate", "nano", "--prompt", ""], ["run", "{b}", "--prompt", ""],
                                  ["run", "{b}", "--prompt-ids", ""], ["generate", "nano", "--prompt-ids", ","]])
def test_an_empty_prompt_is_a_usage_error(nano_bundle, capsys, argv):
    assert main([a.format(b=nano_bundle) for a in argv]) == 2
    assert "the prompt is empty: give --prompt text or --prompt-ids" in one_error(capsys)


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "coreml", "--preset", "xnnpack-8da4w"], "--preset: the presets are xnnpack recipes"),
    (["--recipe", "coreml", "--qembedding", "4w"], "--qembedding: not a Core ML flag"),
    (["--recipe", "coreml-pte", "--gdn-layout", "state"], "--gdn-layout/--head-fp32 apply to --recipe coreml only"),
    (["--head-fp32"], "--head-fp32 applies to --recipe coreml only"),
])
def test_a_flag_the_recipe_cannot_honour_is_refused_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
    import qwen_mobile.export.source as sources

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(sources, "load_model", must_not_load)
    assert main(["export", "tiny", "--out", str(tmp_path / "b"), *flags]) == 2
    assert message in one_error(capsys)
    assert not (tmp_path / "b").exists()


def test_qlinear_fp32_alone_means_full_precision_and_is_printed():
    settings = ExportSettings.resolve(None, qlinear="fp32")
    assert (settings.preset, settings.qlinear, settings.qembedding) == ("xnnpack-fp32", "fp32", "none")
    text = settings.describe()
    assert "qembedding         none     (preset xnnpack-fp32, chosen by --qlinear fp32)" in text
    assert "qlinear            fp32     (--qlinear)" in text
    # With an explicit quantized preset the combination is refused with the preset to use.
    with pytest.raises(UsageError, match="--qlinear fp32 with --preset xnnpack-8da4w keeps its 4w embedding.*"
                                         "--preset xnnpack-fp32"):
        ExportSettings.resolve("xnnpack-8da4w", qlinear="fp32")
    # Saying it explicitly keeps the mixed recipe.
    assert ExportSettings.resolve("xnnpack-8da4w", qlinear="fp32", qembedding="4w").qembedding == "4w"


def test_export_prints_the_effective_recipe_before_it_starts(tmp_path, capsys, monkeypatch):
    import qwen_mobile.export.source as sources

    def stop(*a, **k):
        raise OSError("stopped after the recipe was printed")

    monkeypatch.setattr(sources, "load_model", stop)
    assert main(["export", "tiny", "--qlinear", "8w", "--group-size", "64", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.index("effective recipe") < err.index("stopped after the recipe was printed")
    assert "qembedding         8w       (preset xnnpack-8w, chosen by --qlinear 8w)" in err
    assert "group_size         64       (--group-size)" in err


# -- exports: the gate's refusal, Ctrl-C, a model without stop ids -----------------------------------------------------

def test_a_verification_refusal_is_one_line_with_its_numbers_and_the_way_out(tmp_path, capsys, monkeypatch):
    import qwen_mobile.export.verify as verify

    real = verify.compare_with_reference

    def disagreeing(program, reference):
        metrics = real(program, reference)
        return dict(metrics, top1_agreement=0.25, mean_kl=3.5)  # what a broken quantization would measure

    monkeypatch.setattr(verify, "compare_with_reference", disagreeing)
    out = tmp_path / "b"
    assert main(["export", "tiny", "--preset", "xnnpack-8da8w", "--quality-gate", "on", "--max-seq-len", "64",
                 "--max-prefill-chunk", "16", "--no-progress", "--out", str(out)]) == 1
    line = one_error(capsys)
    assert line.startswith("error: export verification failed, gate 'top-1 agreement >= ")
    assert "top-1 agreement 25.0%, mean KL 3.5" in line and "nothing written" in line
    assert "--quality-gate off" in line and "--preset xnnpack-fp32" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_ctrl_c_during_an_export_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "b"
    # Started as from a terminal, with Ctrl-C's default action: a job started with `&` by a non-interactive shell (a CI
    # script, `nohup cmd &`) inherits SIGINT ignored, and then the export rightly runs on to the end (exit 0).
    proc = subprocess.Popen(CLI + ["export", "tiny", "--no-progress", "--out", str(out)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while "effective recipe" not in seen:  # imports done, the export has started
        line = proc.stderr.readline()
        assert line, f"export ended before it started: {seen[-2000:]}"
        seen += line
    time.sleep(3.0)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 130
    lines = [line for line in error_lines(rest) if not line.startswith("  ")]
    assert lines == ["qwen-mobile export: interrupted; nothing written"], rest[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_stop_ids_exports_a_valid_bundle_that_says_so(tmp_path, capsys):
    source = tmp_path / "no-eos"
    make_hf_causal_lm("hv1x", tied=False, eos_token_id=None).save_pretrained(source)
    assert "eos_token_id" not in json.loads((source / "config.json").read_text()) or \
        json.loads((source / "config.json").read_text())["eos_token_id"] is None
    out = tmp_path / "bundle"
    with pytest.warns(UserWarning, match="no eos_token_id and there is no tokenizer"):
        assert main(["export", str(source), "--qlinear", "fp32", "--max-seq-len", "64", "--max-prefill-chunk", "16",
                     "--no-progress", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["stop_ids"] == [] and manifest["recipe"]["qembedding"] == "none"
    capsys.readouterr()
    assert main(["run", str(out), "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["generated_tokens"] == 5
    assert "has no stop ids" in captured.err and "stops only at --max-new-tokens 5" in captured.err
