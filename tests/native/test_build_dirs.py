"""A runner build folder outside the checkout (the ARM cost cache, shared by clones) is started over when another
source tree configured it: CMake refuses to reuse it, which failed a fresh clone's CI run on a developer's machine."""

from qwen_mobile.runtime import native


def configured(folder, source):
    folder.mkdir(parents=True)
    (folder / "CMakeCache.txt").write_text(f"# cache\nCMAKE_HOME_DIRECTORY:INTERNAL={source}\nOTHER:STRING=x\n")
    (folder / "qwen-bench").write_text("stale binary")


def test_a_build_folder_from_another_checkout_is_started_over(tmp_path):
    other = tmp_path / "other-clone-build"
    configured(other, tmp_path / "elsewhere" / "runtime")
    native._forget_other_checkouts_build(other)
    assert not other.exists()


def test_a_build_folder_of_this_checkout_is_kept(tmp_path):
    mine = tmp_path / "my-build"
    configured(mine, native.RUNTIME_DIR)
    native._forget_other_checkouts_build(mine)
    assert (mine / "qwen-bench").read_text() == "stale binary"
