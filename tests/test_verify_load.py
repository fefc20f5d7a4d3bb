"""Loading a submission: a file that does not import is one readable line naming where, exactly once."""

from pathlib import Path

import pytest

from torchdojo.verify.load import LoadFailure, describe_exception, load_class


def _failure(path: Path, source: str) -> str:
    path.write_text(source)
    with pytest.raises(LoadFailure) as e:
        load_class(f"{path}:Conv2d")
    return str(e.value)


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import torch\n\nclass Conv2d(torch.nn.Module):\n    def f(self)\n        pass\n",
         "SyntaxError: expected ':' (conv.py, line 4)"),
        ("x = 1\n    y = 2\n", "IndentationError: unexpected indent (conv.py, line 2)"),
    ],
)  # fmt: skip
def test_a_syntax_error_names_its_position_once(tmp_path: Path, source: str, expected: str) -> None:
    msg = _failure(tmp_path / "conv.py", source)
    assert msg == f"importing {tmp_path / 'conv.py'} failed: {expected}"
    assert msg.count("line") == 1


def test_a_syntax_error_in_a_sibling_module_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("def g(:\n    pass\n")
    msg = _failure(tmp_path / "conv.py", "import helper\n")
    assert msg.endswith("(helper.py, line 1)") and msg.count("helper.py, line") == 1


def test_other_exceptions_still_point_into_the_submission(tmp_path: Path) -> None:
    msg = _failure(tmp_path / "conv.py", "x = 1\nraise ValueError('no')\n")
    assert msg.endswith("ValueError: no (conv.py, line 2)")
    assert describe_exception(SyntaxError("bare")) == "SyntaxError: bare"
