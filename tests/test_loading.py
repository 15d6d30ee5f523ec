import pytest

from harness.calling.loading import LoadError, load_implementation


def test_builtin_module_and_file_specs(tmp_path):
    assert load_implementation("torch").name == "torch"
    impl = load_implementation("tests.implementations.sound:upcast_float32")
    assert impl.source == "tests.implementations.sound:upcast_float32" and callable(impl.fn)
    path = tmp_path / "mine.py"
    path.write_text("import torch\ndef loss(x, t):\n    '''Mine.'''\n    return torch.zeros(x.shape[0])\n")
    impl = load_implementation(f"{path}:loss")
    assert impl.description == "Mine."


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "unknown implementation 'nonsense'"),
        ("no_such_module_abc:fn", "importing no_such_module_abc raised ModuleNotFoundError"),
        ("tests.implementations.sound:missing", "has no attribute 'missing'"),
        ("tests.implementations.mutants:BUG_CLASSES", "is not callable"),
        ("/no/such/file.py:fn", "no file"),
        (":fn", "unknown implementation"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(LoadError, match=message):
        load_implementation(spec)


def test_file_that_raises_on_import(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(LoadError, match="raised RuntimeError: boom"):
        load_implementation(f"{path}:fn")
