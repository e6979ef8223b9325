"""`qwen-mobile export --recipe coreml / coreml-pte` from the command line: the flags reach the exporters, the
summary prints, Core ML-only flags are refused for the wrong recipe, and the host runtime refuses to run the result."""

import pytest

from qwen_mobile.export.cli import main
from qwen_mobile.runtime.bundle import BundleError, load_manifest
from qwen_mobile.runtime.bundle import Bundle


def test_export_coreml_from_the_cli(tmp_path, capsys):
    out = tmp_path / "tiny-coreml"
    assert main(["export", "tiny", "--recipe", "coreml", "--qlinear", "8w", "--max-seq-len", "64",
                 "--max-prefill-chunk", "16", "--out", str(out), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "recipe        coreml qlinear=8w" in summary and "verification  PASS" in summary
    manifest = load_manifest(out)
    assert manifest["recipe"]["name"] == "coreml" and manifest["recipe"]["qlinear"] == "8w"
    assert manifest["state"]["max_seq_len"] == 64
    assert manifest["program"]["methods"]["forward"]["max_tokens"] == 16
    with pytest.raises(BundleError, match="runs on Apple devices"):
        Bundle(out)


def test_core_ml_flags_are_checked(tmp_path, capsys):
    assert main(["export", "tiny", "--recipe", "coreml", "--group-size", "64", "--out", str(tmp_path / "a")]) == 2
    assert "--group-size: not a Core ML flag" in capsys.readouterr().err
    assert main(["export", "tiny", "--recipe", "coreml", "--tied-table", "twice", "--out", str(tmp_path / "t")]) == 2
    assert "--tied-table: not a Core ML flag" in capsys.readouterr().err
    assert main(["export", "tiny", "--recipe", "coreml-pte", "--head-fp32", "--out", str(tmp_path / "b")]) == 2
    assert "apply to --recipe coreml only" in capsys.readouterr().err
    assert main(["export", "tiny", "--recipe", "coreml", "--qlinear", "8da4w", "--out", str(tmp_path / "c")]) == 2
    assert "not valid for recipe coreml" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
