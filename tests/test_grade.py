"""`torchdojo grade`'s orchestration with a fake checker: intake, points, resume, outputs, refusals.

The fake checker stands in for the isolated one (tests/test_grade_class.py grades a generated class with the
real fork server): it reads a `# FAKE: {...}` line in the entry file saying which properties fail.
"""

import contextlib
import csv
import dataclasses
import inspect
import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchdojo.errors import DojoError
from torchdojo.verify import grade, intake, report, sandbox
from torchdojo.verify.rubric import default_rubric, load_rubric

PROPS = ["parameters", "forward", "grad x", "grad weight", "grad bias", "rules (source)", "rules (ops)"]
GOOD = "class Conv2d:\n    pass\n"


@dataclasses.dataclass(frozen=True)
class FakeLimits:
    wall_s: float = 5.0


@dataclasses.dataclass
class FakeProp:
    name: str
    passed: bool
    runs: int
    detail: str
    case: dict | None = None


@dataclasses.dataclass
class FakeVerdict:
    target: str
    submission: str
    properties: list[FakeProp]
    failure: str | None
    stdout: str
    stderr: str
    seconds: float


class FakeChecker:
    """Counts its calls; the verdict follows the entry file's `# FAKE: {"fail": [...], "failure": ...}`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.opened = 0

    def __call__(self) -> contextlib.AbstractContextManager:
        @contextlib.contextmanager
        def opened() -> Iterator[Any]:
            self.opened += 1
            yield self.check

        return opened()

    def check(self, target: str, spec: str, **options: Any) -> FakeVerdict:
        self.calls.append(spec)
        path = Path(spec.rpartition(":")[0])
        text = path.read_text()
        if "RAISE" in text:
            raise RuntimeError("fork server died")
        if "INTERRUPT" in text and not os.environ.get("FAKE_NO_INTERRUPT"):
            raise KeyboardInterrupt
        if os.environ.get("FAKE_SLOW"):
            time.sleep(float(os.environ["FAKE_SLOW"]))
        line = next((x for x in text.splitlines() if x.startswith("# FAKE: ")), "# FAKE: {}")
        how = json.loads(line[len("# FAKE: ") :])
        case = {"init": {"in_channels": 1}, "shape": {"x": [1, 1, 3, 3]}, "dtype": "float32", "seed": 7}
        props = [
            FakeProp(p, p not in how.get("fail", []), 3, f"{p} is wrong", case if p in how.get("fail", []) else None)
            for p in PROPS
            if not (options.get("allow_builtin") and p.startswith("rules"))
        ]
        return FakeVerdict(target, spec, props, how.get("failure"), how.get("stdout", ""), "", 0.5)


def settings(**kw: Any) -> grade.Settings:
    base = dict(
        target="conv2d",
        entry=intake.Entry("*.py", "Conv2d"),
        rubric=default_rubric(PROPS),
        seeds=None,
        max_examples=5,
        allow_builtin=False,
        limits=FakeLimits(),
    )
    return grade.Settings(**{**base, **kw})


def run(subs: Path, out: Path, checker: FakeChecker, st: grade.Settings | None = None, **kw: Any) -> grade.ClassResult:
    st = st or settings()
    with grade.grading_folder(out, subs) as folder:
        res = grade.grade_class(st, subs, folder, checker=checker, progress=lambda _: None, **kw)
        report.write_outputs(folder, res, st)
    return res


def write_zip(path: Path, members: dict[str, bytes | str], **info: Any) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name) if not info else info[name], data)


@pytest.fixture
def klass(tmp_path: Path) -> Path:
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "alice.py").write_text(GOOD)
    (subs / "bob.py").write_text(GOOD + '# FAKE: {"fail": ["forward", "grad x"]}\n')
    (subs / "carol").mkdir()
    (subs / "carol" / "conv.py").write_text("from helper import X\n" + GOOD)
    (subs / "carol" / "helper.py").write_text("X = 1\n")
    write_zip(subs / "dave.zip", {"hw/conv.py": GOOD + '# FAKE: {"failure": "timed out after 5 s"}\n'})
    (subs / "=cmd.py").write_text(GOOD + '# FAKE: {"fail": ["rules (ops)"], "stdout": "hello ```` world"}\n')
    (subs / ".hidden.py").write_text(GOOD)
    return subs


def read_csv(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((out / "grades.csv").read_text())))


def test_class_is_graded_with_points_per_property(klass: Path, tmp_path: Path) -> None:
    checker = FakeChecker()
    res = run(klass, tmp_path / "out", checker, jobs=2)
    rows = {r["student"]: r for r in read_csv(tmp_path / "out")}
    assert set(rows) == {"alice", "bob", "carol", "dave", "cmd"}  # hidden file skipped; '=' dropped from the name
    assert list(rows["alice"]) == ["student", *PROPS, "points", "total", "seconds", "note"]
    assert float(rows["alice"]["points"]) == float(rows["alice"]["total"]) == 15.0
    assert float(rows["bob"]["forward"]) == 0 and float(rows["bob"]["grad x"]) == 0
    assert float(rows["bob"]["points"]) == 15.0 - 4 - 2
    assert float(rows["dave"]["points"]) == 0 and "timed out" in rows["dave"]["note"]  # a failed run earns nothing
    assert float(rows["cmd"]["points"]) == 13.0
    assert checker.opened == 1  # one checker (fork server) shared by the jobs
    assert sorted(Path(c.rpartition(":")[0]).name for c in checker.calls) == [
        "=cmd.py",
        "alice.py",
        "bob.py",
        "conv.py",
        "conv.py",
    ]
    assert all(c.endswith(":Conv2d") and str(tmp_path / "out" / "work") in c for c in checker.calls)
    assert (res.checked, res.reused, res.ungradable) == (5, 0, 0)
    page = (tmp_path / "out" / "summary.html").read_text()
    assert "Among the 4 students whose run finished" in page  # dave timed out
    assert "<td>forward</td><td>4</td><td>1</td>" in page and "<td>rules (ops)</td><td>2</td><td>1</td>" in page
    assert "<td>dave</td><td>timed out after 5 s</td>" in page


def test_resume_skips_unchanged_and_regrades_changed(klass: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(klass, out, FakeChecker())
    again = FakeChecker()
    res = run(klass, out, again)
    assert again.calls == [] and (res.checked, res.reused) == (0, 5)
    (klass / "bob.py").write_text(GOOD)  # bob fixed his layer
    third = FakeChecker()
    res = run(klass, out, third)
    assert [Path(c.rpartition(":")[0]).name for c in third.calls] == ["bob.py"]
    assert {r["student"]: r["earned"] for r in res.results}["bob"] == 15.0
    fourth = FakeChecker()
    run(klass, out, fourth, settings(seeds=(11, 12)))  # hidden seeds: a different grading, all again
    assert len(fourth.calls) == 5
    fifth = FakeChecker()
    run(klass, out, fifth, settings(seeds=(11, 12)), force=True)
    assert len(fifth.calls) == 5


def test_a_changed_rubric_or_limit_regrades(klass: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(klass, out, FakeChecker())
    for changed in (
        settings(limits=FakeLimits(9.0)),
        settings(rubric=default_rubric(PROPS).__class__({**default_rubric(PROPS).points, "forward": 5}, "x")),
    ):
        checker = FakeChecker()
        run(klass, out, checker, changed)
        assert len(checker.calls) == 5


def test_a_grader_error_is_a_note_and_not_cached(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "eve.py").write_text(GOOD + "# RAISE\n")
    (subs / "ann.py").write_text(GOOD)
    res = run(subs, tmp_path / "out", FakeChecker())
    eve = next(r for r in res.results if r["student"] == "eve")
    assert eve["earned"] == 0 and "grader error" in eve["note"] and eve["key"] is None
    again = FakeChecker()
    run(subs, tmp_path / "out", again)
    assert [Path(c.rpartition(":")[0]).name for c in again.calls] == ["eve.py"]


def test_feedback_has_reproduce_commands_and_fenced_output(klass: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(klass, out, FakeChecker(), settings(seeds=(123456,)))
    bob = (out / "feedback" / "bob.md").read_text()
    assert "torchdojo check conv2d bob.py:Conv2d --case" in bob and '"seed":7' in bob
    assert "123456" not in bob  # the hidden seeds are not revealed
    assert "hidden cases" in bob
    assert "| forward | FAIL | 0 / 4 |" in bob and "| parameters | pass | 1 / 1 |" in bob
    cmd = (out / "feedback" / "cmd.md").read_text()
    assert "`````text\nhello ```` world\n`````" in cmd  # a fence longer than the output's backticks
    dave = (out / "feedback" / "dave.md").read_text()
    assert "the run did not finish" in dave and "torchdojo check conv2d hw/conv.py:Conv2d" in dave
    assert sorted(p.name for p in (out / "feedback").iterdir()) == [
        f"{s}.md" for s in sorted(["alice", "bob", "carol", "cmd", "dave"])
    ]


def test_summary_is_self_contained_and_escaped(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "x<script>.py").write_text(GOOD + '# FAKE: {"failure": "<img src=x onerror=alert(1)>"}\n')
    run(subs, tmp_path / "out", FakeChecker())
    page = (tmp_path / "out" / "summary.html").read_text()
    assert "<svg" in page and "Most failed properties" in page and "Slowest submissions" in page
    assert "<img" not in page and "<script" not in page and "&lt;img src=x" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


def test_csv_cells_cannot_be_formulas(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "+evil.py").write_text(GOOD + '# FAKE: {"failure": "=HYPERLINK(\\"x\\")"}\n')
    run(subs, tmp_path / "out", FakeChecker())
    (row,) = read_csv(tmp_path / "out")
    assert row["student"] == "evil" and row["note"].startswith("'=")


@given(st.text(min_size=1, max_size=40))
def test_student_names_are_safe_and_unique(name: str) -> None:
    taken: set[str] = set()
    a, b = intake.student_name(Path(name + ".py"), taken), intake.student_name(Path(name + ".zip"), taken)
    for n in (a, b):
        assert n and n[0] not in "=+-@." and all(c.isalnum() and c.isascii() or c in "._-" for c in n)
    assert a.lower() != b.lower()


def test_entry_missing_ambiguous_or_lone(tmp_path: Path) -> None:
    e = intake.Entry("*.py", "Conv2d")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("x")
    assert "no file matching '*.py' (found: notes.txt)" in intake.find_entry(tmp_path / "none", e)[1]
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.py").write_text(GOOD)
    (two / "b.py").write_text("import torch\n" + GOOD)
    path, why = intake.find_entry(two, e)
    assert path is None and "ambiguous entry: Conv2d is defined in a.py, b.py" in why
    (two / "a.py").write_text("Conv2d = 1\n")
    (two / "b.py").write_text("from torch.nn import Conv2d\n")
    assert "ambiguous entry: Conv2d is defined in a.py, b.py" in intake.find_entry(two, e)[1]
    (two / "a.py").write_text(GOOD)
    (two / "b.py").write_text("class Helper:\n    pass\n")
    assert intake.find_entry(two, e) == (two / "a.py", None)
    (two / "test_a.py").write_text("from a import Conv2d\n")  # a student's own test: the class statement wins
    assert intake.find_entry(two, e) == (two / "a.py", None)
    (two / "test_a.py").unlink()
    (two / "._a.py").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork beside it
    assert intake.find_entry(two, e) == (two / "a.py", None)
    (two / "a.py").write_text("class Conv2d(\n")  # does not parse: the checker will say where
    assert intake.find_entry(two, e) == (two / "a.py", None)
    (two / "a.py").write_text("class Other:\n    pass\n")
    assert "defines Conv2d (classes found: a.py: Other; b.py: Helper)" in intake.find_entry(two, e)[1]
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "mine.py").write_text("class MyConv:\n    pass\n")  # wrong name: the checker names the classes
    assert intake.find_entry(lone, e) == (lone / "mine.py", None)
    assert intake.find_entry(two, intake.Entry("b.py", "Conv2d")) == (two / "b.py", None)


def test_ungradable_students_get_zero_with_a_note(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    write_zip(subs / "escape.zip", {"../evil.py": GOOD})
    write_zip(subs / "absolute.zip", {"/tmp/evil.py": GOOD})
    write_zip(subs / "bomb.zip", {"conv.py": GOOD, "zeros.bin": b"\0" * (intake.MAX_BYTES + 1)})
    write_zip(subs / "many.zip", {f"f{i}.py": "" for i in range(intake.MAX_FILES + 1)})
    (subs / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    (subs / "report.pdf").write_bytes(b"%PDF")
    (subs / "empty").mkdir()
    checker = FakeChecker()
    res = run(subs, tmp_path / "out", checker)
    notes = {r["student"]: r["note"] for r in res.results}
    assert checker.calls == []
    assert all(r["earned"] == 0 for r in res.results)
    assert "outside the folder" in notes["escape"] and "absolute" in notes["absolute"]
    assert "zip bomb" in notes["bomb"] and f"{intake.MAX_FILES + 1} members" in notes["many"]
    assert "not a readable zip" in notes["broken"] and "not a .py file" in notes["report.pdf"]
    assert "no file matching" in notes["empty"]
    assert not (tmp_path / "out" / "evil.py").exists() and not (tmp_path / "evil.py").exists()


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.py"
    secret.write_text("TOKEN = 1\n")
    subs = tmp_path / "subs"
    (subs / "mallory").mkdir(parents=True)
    (subs / "mallory" / "conv.py").write_text(GOOD)
    os.symlink(secret, subs / "mallory" / "leak.py")
    os.symlink(tmp_path, subs / "mallory" / "up")
    link = zipfile.ZipInfo("link.py")
    link.external_attr = 0o120777 << 16
    conv = zipfile.ZipInfo("conv.py")
    write_zip(subs / "zlink.zip", {"link.py": "/etc/passwd", "conv.py": GOOD}, **{"link.py": link, "conv.py": conv})
    res = run(subs, tmp_path / "out", FakeChecker())
    notes = {r["student"]: r["note"] for r in res.results}
    work = tmp_path / "out" / "work"
    assert sorted(p.name for p in (work / "mallory").iterdir()) == ["conv.py"]
    assert "leak.py skipped (a symbolic link)" in notes["mallory"] and "up skipped" in notes["mallory"]
    assert sorted(p.name for p in (work / "zlink").iterdir()) == ["conv.py"] and "link.py skipped" in notes["zlink"]
    assert all(r["earned"] == 15.0 for r in res.results)


def test_output_folder_refusals(klass: Path, tmp_path: Path) -> None:
    with pytest.raises(DojoError, match="inside the submissions folder"):
        run(klass, klass / "grades", FakeChecker())
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(DojoError, match="not written by torchdojo grade"):
        run(klass, other, FakeChecker())
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]  # nothing left in it
    with pytest.raises(DojoError, match="is inside --out"):
        run(klass, klass.parent, FakeChecker())
    with pytest.raises(DojoError, match="is not a folder"):
        run(tmp_path / "nope", tmp_path / "out", FakeChecker())
    out = tmp_path / "out"
    with grade.grading_folder(out, klass):
        with pytest.raises(DojoError, match="another torchdojo grade"):
            with grade.grading_folder(out, klass):
                pass


def test_rubric_files(tmp_path: Path) -> None:
    toml = tmp_path / "r.toml"
    body = "\n".join(f'"{p}" = {i}' for i, p in enumerate(PROPS))
    toml.write_text(f'target = "conv2d"\n[points]\n{body}\n')
    r = load_rubric(toml, "conv2d", PROPS)
    assert r.points == {p: float(i) for i, p in enumerate(PROPS)} and r.total == sum(range(len(PROPS)))
    js = tmp_path / "r.json"
    js.write_text(json.dumps({"points": {p: 1 for p in PROPS}}))
    assert load_rubric(js, "conv2d", PROPS).total == len(PROPS)
    assert list(load_rubric(js, "conv2d", PROPS[:5], PROPS[5:]).points) == PROPS[:5]  # --allow-builtin
    bad = {
        '[points]\nforward = 4\n"grad y" = 2\n': "does not have: 'grad y'",
        "[points]\nforward = 4\n": "gives no points for: 'parameters'",
        'target = "rnn-cell"\n[points]\nforward = 1\n': "is for target 'rnn-cell'",
        f"[points]\n{body.replace('= 1', '= -1')}\n": "points are between 0",
        f"[points]\n{body.replace('= 1', '= true')}\n": "a number is needed",
        f"[points]\n{body.replace('= 1', '= nan')}\n": "a number is needed",
        "points = 3\n": "no 'points' table",
        "[points\n": "not valid TOML",
        f'tagret = "conv2d"\n[points]\n{body}\n': "unknown keys: tagret",
    }
    for text, message in bad.items():
        toml.write_text(text)
        with pytest.raises(DojoError, match=message):
            load_rubric(toml, "conv2d", PROPS)
    with pytest.raises(DojoError, match="cannot read"):
        load_rubric(tmp_path / "missing.toml", "conv2d", PROPS)


def test_default_rubric_weights() -> None:
    r = default_rubric(PROPS)
    assert r.points["forward"] == 4 and r.points["grad x"] == 2 and r.points["rules (ops)"] == 2
    assert r.points["parameters"] == 1


def test_entry_pattern_is_validated() -> None:
    for bad in ("Conv2d", "*.py:", "*.py:not a name"):
        with pytest.raises(DojoError, match="is not GLOB:Class"):
            intake.Entry.parse(bad)
    assert intake.Entry.parse("src/*.py:Conv2d") == intake.Entry("src/*.py", "Conv2d")


def test_command_targets_are_the_checkers_targets() -> None:
    from torchdojo.commands import grade_cmd
    from torchdojo.verify.targets import TARGETS

    assert list(grade_cmd.TARGET_NAMES) == list(TARGETS) and sorted(TARGETS) == sorted(grade.DEFAULT_CLASS)
    from torchdojo.verify.sandbox import Limits

    assert list(grade_cmd.LIMIT_HELP) == list(grade_cmd.LIMIT_FLAGS) == list(dataclasses.asdict(Limits()))
    assert grade_cmd.LIMIT_FLAGS is report.LIMIT_FLAGS
    assert grade.DEFAULT_EXAMPLES == inspect.signature(sandbox.check_isolated).parameters["max_examples"].default


def test_allow_builtin_drops_the_rules(klass: Path, tmp_path: Path) -> None:
    graded, dropped = grade.target_properties("conv2d", True)
    assert dropped == ["rules (source)", "rules (ops)"] and not set(dropped) & set(graded)
    st = settings(rubric=default_rubric(graded), allow_builtin=True)
    checker = FakeChecker()
    with grade.grading_folder(tmp_path / "out", klass) as folder:
        res = grade.grade_class(st, klass, folder, checker=checker, progress=lambda _: None)
    assert {r["student"]: r["earned"] for r in res.results}["cmd"] == 11.0  # its failing rule is not graded
    assert grade.target_properties("ste", False)[0] == ["forward", "grad x"]  # a target without rules


def test_reproduce_command_carries_non_default_limits(tmp_path: Path) -> None:
    from torchdojo.verify.sandbox import Limits

    st = settings(limits=Limits(wall_s=5.0, memory_mb=1024), allow_builtin=True)
    cmd = report._repro(st, "my dir/conv.py", {"seed": 1, "label": "it's"})
    assert cmd.startswith("torchdojo check conv2d 'my dir/conv.py:Conv2d' --case ")
    assert "--allow-builtin --timeout 5 --memory-mb 1024" in cmd and "--cpu-s" not in cmd
    assert "it'\"'\"'s" in cmd  # shell-quoted


def test_cli_refuses_a_bad_rubric_before_grading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchdojo.cli import main

    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "a.py").write_text(GOOD)
    (tmp_path / "r.toml").write_text("[points]\nforwrd = 4\n")
    argv = [
        "grade",
        "conv2d",
        str(tmp_path / "subs"),
        "--out",
        str(tmp_path / "out"),
        "--rubric",
        str(tmp_path / "r.toml"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'forwrd'" in err and "Traceback" not in err and not (tmp_path / "out").exists()
    assert main([*argv[:5], "--timeout", "0"]) == 2 and "wall_s must be > 0" in capsys.readouterr().err
    assert main([*argv[:5], "--entry", "Conv2d"]) == 2 and "is not GLOB:Class" in capsys.readouterr().err


@given(st.lists(st.floats(0, 37.5), max_size=30), st.sampled_from([15.0, 37.5, 0.0, 30.0]))
def test_histogram_counts_every_student_once(totals: list[float], maximum: float) -> None:
    totals = [min(t, maximum) for t in totals]
    labels, counts = report.histogram(totals, maximum)
    assert len(labels) == len(counts) and sum(counts) == len(totals)
    if maximum == 15.0:
        assert labels[0] == "0" and labels[-1] == "15" and counts[-1] == totals.count(15.0)


def test_reported_properties_must_be_known(klass: Path, tmp_path: Path) -> None:
    st = settings(rubric=default_rubric(PROPS[:5]))  # the checker reports rules this grading does not know
    with grade.grading_folder(tmp_path / "out", klass) as folder:
        res = grade.grade_class(st, klass, folder, checker=FakeChecker(), progress=lambda _: None)
    assert all(r["earned"] == 0 and "does not know: rules (ops), rules (source)" in r["note"] for r in res.results)


def test_an_interrupted_grading_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    names = "abcdefgh"
    for name in names:
        (subs / f"{name}.py").write_text(GOOD + ("# INTERRUPT\n" if name == "b" else ""))
    first = FakeChecker()
    monkeypatch.setenv("FAKE_SLOW", "0.2")
    with pytest.raises(KeyboardInterrupt):
        run(subs, tmp_path / "out", first, jobs=1)
    started = [Path(c.rpartition(":")[0]).stem for c in first.calls]
    assert started[:2] == ["a", "b"] and len(started) < len(names)  # the queued ones were dropped
    monkeypatch.delenv("FAKE_SLOW")
    monkeypatch.setenv("FAKE_NO_INTERRUPT", "1")
    second = FakeChecker()
    res = run(subs, tmp_path / "out", second, jobs=1)
    assert [Path(c.rpartition(":")[0]).stem for c in second.calls] == list(names[1:]) and res.reused == 1
