import sys

import pytest

from harness.calling.loading import LoadError, load_implementation


def test_builtin_module_and_file_specs(tmp_path, monkeypatch):
    assert load_implementation("torch").name == "torch"
    impl = load_implementation("tests.implementations.sound:upcast_float32")
    # imported in its sandbox only: the harness holds no callable
    assert impl.source == impl.location == "tests.implementations.sound:upcast_float32" and impl.fn is None
    assert impl.description.startswith("float16/bfloat16 computed in float32")
    path = tmp_path / "mine.py"
    path.write_text("import torch\ndef loss(x, t):\n    '''Mine.'''\n    return torch.zeros(x.shape[0])\n")
    monkeypatch.chdir(tmp_path)
    impl = load_implementation("mine.py:loss")  # relative to the current folder, made absolute
    assert impl.description == "Mine." and impl.location == f"{path}:loss" and impl.framework == "torch"
    assert not any(getattr(m, "__file__", None) == str(path) for m in list(sys.modules.values()))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "unknown implementation 'nonsense'"),
        ("no_such_module_abc:fn", "importing no_such_module_abc raised ModuleNotFoundError"),
        ("tests.implementations.sound:missing", "has no attribute 'missing'"),
        ("tests.implementations.mutants:BUG_CLASSES", "is not callable"),
        ("/no/such/file.py:fn", "no file"),
        (":fn", "unknown implementation"),
        ("tests.implementations.sound:a$b", "contains '$'"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(LoadError, match=message.replace("$", r"\$")):
        load_implementation(spec)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
        ("import sys\nsys.exit(3)\n", r"called sys.exit\(3\)"),
        ("import os\nos._exit(7)\n", "exited with code 7 while importing it"),
        ("import ctypes\nctypes.string_at(0)\n", "died of signal 11 .SIGSEGV. while importing it"),
    ],
)
def test_file_that_fails_at_import_is_a_load_error(tmp_path, source, message):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(LoadError, match=message):
        load_implementation(f"{path}:fn")
