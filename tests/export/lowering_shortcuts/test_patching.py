"""patched() leaves every attribute as it found it: the lowering shortcuts must not outlive their `with` block."""

import types

import pytest

from qwen_mobile.export.lowering_shortcuts.patching import patched


class Base:
    @classmethod
    def inherited(cls):
        return "base"


class Child(Base):
    @classmethod
    def own(cls):
        return "child"


def test_an_inherited_attribute_is_absent_again_and_an_own_one_is_the_same_descriptor():
    own_descriptor = vars(Child)["own"]
    with patched(Child, "inherited", classmethod(lambda cls: "patched")), \
            patched(Child, "own", classmethod(lambda cls: "patched")):
        assert Child.inherited() == Child.own() == "patched"
        assert Base.inherited() == "base"
    assert "inherited" not in vars(Child) and Child.inherited() == "base"
    assert vars(Child)["own"] is own_descriptor and Child.own() == "child"


def test_a_module_attribute_is_restored_even_when_the_block_raises():
    module = types.ModuleType("m")
    module.value = 1
    with pytest.raises(RuntimeError, match="raised inside the block"), patched(module, "value", 2):
        assert module.value == 2
        raise RuntimeError("raised inside the block")
    assert module.value == 1
