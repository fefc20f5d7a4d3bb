"""End to end: `torchdojo grade conv2d` on a class made by benchmarks/make_class.py, with the real isolated
checker (fork server); every verdict must be the one expected.json says, and a second grading reuses all."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from torchdojo.cli import main
from torchdojo.verify.grade import target_properties

ROOT = Path(__file__).resolve().parents[1]


def _make_class_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("make_class", ROOT / "benchmarks" / "make_class.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_class"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_class_is_graded_right(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mc = _make_class_module()
    expected = mc.make_class(tmp_path / "class", 14, target_properties("conv2d", False)[0])
    assert {e["variant"] for e in expected.values()} >= {"unfold", "endless_loop", "zip_bomb", "builtin_F"}
    out = tmp_path / "grades"
    argv = ["grade", "conv2d", str(tmp_path / "class" / "submissions"), "--out", str(out), "--jobs", "2"]
    assert main([*argv, "--timeout", "5", "--max-examples", "10"]) == 0
    results = [json.loads((out / "results" / f"{s}.json").read_text()) for s in expected]
    assert mc.mismatches(expected, results) == []
    assert (out / "summary.html").is_file() and len(list((out / "feedback").glob("*.md"))) == 14
    assert "Traceback" not in capsys.readouterr().out
    timed_out = next(r for r in results if "endless" in r["student"])
    assert timed_out["seconds"] < 5 + 10  # the wall limit held
    assert main([*argv, "--timeout", "5", "--max-examples", "10"]) == 0  # nothing changed: all reused
    assert "0 checked, 12 unchanged since the last grading (kept), 2 not gradable" in capsys.readouterr().out
