"""`torchdojo grade`: grade a whole class, one isolated check per student, resumable, in parallel.

SUBMISSIONS holds one entry per student: a .py file, a folder or a .zip. Each is copied (a zip extracted
under size, count and path rules) into OUT/work/<student>/, so no student can import another's files; the
entry FILE.py:Class is found there by the `--entry` pattern; the isolated checker
(`torchdojo.verify.sandbox`) runs it, and the rubric turns its properties into points. A student's result
is kept in OUT/results/<student>.json with the key it was graded under (content hash, target, entry,
rubric, seeds, case-seed scheme, limits, examples, torchdojo version): a later grading into OUT with the
same key reuses it.
A student who cannot be graded (no entry, two candidates, a refused zip) gets 0 and a note; the
grader itself failing on one student is a note too, never cached, so the next grading retries it.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

import torchdojo
from torchdojo.errors import DojoError
from torchdojo.runs import atomic_write_json
from torchdojo.verify import intake
from torchdojo.verify.rubric import Rubric, default_rubric, load_rubric

DEFAULT_EXAMPLES = 50  # random cases per seed, as check_isolated's default


class Checker(Protocol):
    """What grades one submission: `sandbox.ForkServer().check` or `sandbox.check_isolated`."""

    def __call__(self, target: str, spec: str, **options: Any) -> Any: ...


CheckerFactory = Callable[[], contextlib.AbstractContextManager[Checker]]


@contextlib.contextmanager
def fork_server_checker() -> Iterator[Checker]:
    """One fork server (torch imported once; one fork per submission)."""
    from torchdojo.verify.sandbox import ForkServer

    with ForkServer() as server:
        yield server.check


@contextlib.contextmanager
def fresh_interpreter_checker() -> Iterator[Checker]:
    """No server: a fresh interpreter per submission (slower; the same verdicts)."""
    from torchdojo.verify.sandbox import check_isolated

    yield check_isolated


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a grade depends on besides the submission's files."""

    target: str
    entry: intake.Entry
    rubric: Rubric
    seeds: tuple[int, ...] | None  # None: the public seed set students run with `check`
    max_examples: int
    allow_builtin: bool
    limits: Any  # sandbox.Limits

    def check_options(self) -> dict[str, Any]:
        return {
            "max_examples": self.max_examples,
            "seeds": list(self.seeds) if self.seeds is not None else None,
            "allow_builtin": self.allow_builtin,
            "limits": self.limits,
        }

    def cases(self) -> list[dict[str, Any]]:
        """Every case of this grading (the seeds' edge cases and draws), drawn once for the whole class, as
        check_isolated would draw them (and in this thread: hypothesis is not made for worker threads)."""
        from torchdojo.verify.cases import PUBLIC_SEEDS, draw_cases
        from torchdojo.verify.targets import TARGETS

        seeds = self.seeds if self.seeds is not None else PUBLIC_SEEDS
        return draw_cases(TARGETS[self.target], seeds, self.max_examples)

    def describe(self) -> dict[str, Any]:
        """The settings as JSON (grading.json, the cache key, the summary page)."""
        from torchdojo.verify.cases import SEED_SCHEME

        return {
            "target": self.target,
            "entry": str(self.entry),
            "rubric": self.rubric.points,
            "rubric_source": self.rubric.source,
            "seeds": list(self.seeds) if self.seeds is not None else "public",
            "max_examples": self.max_examples,
            "allow_builtin": self.allow_builtin,
            "limits": dataclasses.asdict(self.limits),
            "case_seeds": SEED_SCHEME,  # a new derivation draws other cases from the same seeds
            "torchdojo": torchdojo.__version__,
        }

    def key(self, content_hash: str) -> str:
        """What a cached result must match to be reused (rubric_source excluded: same points, same grade)."""
        described = {k: v for k, v in self.describe().items() if k != "rubric_source"}
        blob = json.dumps({**described, "content": content_hash}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


DEFAULT_CLASS = {  # the class `--entry` looks for unless told: the names torchdojo's own layers use
    "conv2d": "Conv2d",
    "conv2d-backward": "Conv2dFunction",
    "conv-transpose": "ConvTranspose2d",
    "ste": "Binarize",
    "rnn-cell": "ElmanCell",
    "reset-cell": "ResetGateCell",
    "lipschitz-rnn": "LipschitzCell",
}


def target_properties(target: str, allow_builtin: bool) -> tuple[list[str], list[str]]:
    """(the properties a grading of `target` checks, in report order; its rules when --allow-builtin
    turns them off)."""
    from torchdojo.verify.rules import rule_properties
    from torchdojo.verify.targets import TARGETS

    t = TARGETS[target]
    rules = rule_properties(t.rules)
    return (t.properties(), rules) if allow_builtin else ([*t.properties(), *rules], [])


def make_settings(
    target: str,
    *,
    entry: str | None = None,
    rubric: Path | None = None,
    seeds: Sequence[int] | None = None,
    max_examples: int | None = None,
    allow_builtin: bool = False,
    limits: Any = None,
) -> Settings:
    """Settings from the command line's values, each validated (a DojoError naming the bad one)."""
    from torchdojo.verify.sandbox import Limits

    if entry is None and target not in DEFAULT_CLASS:
        raise DojoError(f"{target} has no default entry", 'pass --entry "GLOB:Class", e.g. --entry "*.py:MyLayer"')
    parsed = intake.Entry.parse(entry) if entry is not None else intake.Entry("*.py", DEFAULT_CLASS[target])
    graded, not_graded = target_properties(target, allow_builtin)
    rub = load_rubric(rubric, target, graded, not_graded) if rubric is not None else default_rubric(graded)
    if seeds is not None and not seeds:
        raise DojoError("--seed needs at least one value")
    if max_examples is not None and max_examples < 0:
        raise DojoError(f"--max-examples must be >= 0, got {max_examples}")
    limits = limits if limits is not None else Limits()
    limits.validate()
    return Settings(
        target=target,
        entry=parsed,
        rubric=rub,
        seeds=tuple(seeds) if seeds is not None else None,
        max_examples=max_examples if max_examples is not None else DEFAULT_EXAMPLES,
        allow_builtin=allow_builtin,
        limits=limits,
    )


def verdict_record(verdict: Any) -> dict[str, Any]:
    """A sandbox Verdict as JSON: process failure, captured output, and each property's outcome."""
    return {
        "failure": verdict.failure,
        "seconds": float(verdict.seconds),
        "stdout": verdict.stdout,
        "stderr": verdict.stderr,
        "notes": list(getattr(verdict, "notes", [])),
        "properties": [
            {
                "name": p.name,
                "passed": bool(p.passed),
                "runs": int(p.runs),
                "passed_runs": getattr(p, "passed_runs", None),
                "detail": p.detail,
                "case": p.case,
            }
            for p in verdict.properties
        ],
    }


def score(record: dict[str, Any] | None, rubric: Rubric, properties: Sequence[str]) -> dict[str, float]:
    """Points per property. A process failure (crash, timeout, memory) or a property that did not run
    earns nothing: only a property the checker saw pass on every case counts."""
    if record is None:
        return rubric.earned({})
    passed = {p["name"]: p["passed"] and p["runs"] > 0 for p in record["properties"]}
    unexpected = set(passed) - set(properties)
    if unexpected:
        raise DojoError(f"the checker reported properties this grading does not know: {', '.join(sorted(unexpected))}")
    return rubric.earned(passed if record["failure"] is None else {})


def _result(sub: intake.Submission, settings: Settings, record: dict[str, Any] | None, note: str | None) -> dict:
    properties = list(settings.rubric.points)
    points = score(record, settings.rubric, properties)
    notes = [n for n in (sub.note, note, record["failure"] if record else None) if n]
    return {
        "student": sub.student,
        "source": sub.source.name,
        "entry": sub.entry_spec,
        "content": sub.content_hash,
        "key": settings.key(sub.content_hash) if note is None else None,  # a grader error is never reused
        "verdict": record,
        "points": points,
        "earned": sum(points.values()),
        "total": settings.rubric.total,
        "seconds": record["seconds"] if record else 0.0,
        "note": "; ".join(notes),
        "graded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cached(path: Path, key: str) -> dict[str, Any] | None:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):  # absent, cut or edited by hand: grade again
        return None
    return old if isinstance(old, dict) and old.get("key") == key else None


def _grade_one(sub: intake.Submission, settings: Settings, check: Checker, cases: list | None) -> dict[str, Any]:
    if sub.entry is None:  # nothing to run: the note says why
        return _result(sub, settings, None, None)
    try:
        options = {**settings.check_options(), **({"cases": cases} if cases is not None else {})}
        verdict = check(settings.target, f"{sub.entry}:{settings.entry.cls}", **options)
        return _result(sub, settings, verdict_record(verdict), None)
    except Exception as e:  # the grader failed on this one (not the student): say so, keep grading the class
        return _result(sub, settings, None, f"grader error, graded 0 and not cached: {type(e).__name__}: {e}")


@dataclasses.dataclass
class ClassResult:
    results: list[dict[str, Any]]  # one per student, in SUBMISSIONS' order
    checked: int  # run through the checker in this call
    reused: int  # unchanged since an earlier grading in OUT
    ungradable: int  # no entry to run (the note says why): 0 points
    seconds: float

    def summary(self) -> str:
        full = sum(1 for r in self.results if r["earned"] == r["total"])
        return (
            f"{len(self.results)} students: {self.checked} checked, {self.reused} unchanged since the last grading "
            f"(kept), {self.ungradable} not gradable (0 points); {full} with full marks; {self.seconds:.0f} s"
        )


def grade_class(
    settings: Settings,
    submissions: Path,
    out: Path,
    *,
    jobs: int = 1,
    force: bool = False,
    checker: CheckerFactory = fork_server_checker,
    progress: Callable[[str], None] = print,
) -> ClassResult:
    """Grade every student in `submissions` into `out` (see the module docstring); the outputs are written
    by `torchdojo.verify.report.write_outputs`."""
    start = time.perf_counter()
    subs = intake.stage_class(submissions, out / "work", settings.entry)
    results: dict[str, dict[str, Any]] = {}
    todo: list[intake.Submission] = []
    (out / "results").mkdir(exist_ok=True)
    for sub in subs:
        old = None if force or sub.entry is None else _cached(_result_path(out, sub), settings.key(sub.content_hash))
        if old is not None:
            results[sub.student] = old
        else:
            todo.append(sub)
    reused = len(results)
    if reused:
        progress(f"{reused} of {len(subs)} submissions unchanged since the last grading in {out}: kept")
    runnable = [s for s in todo if s.entry is not None]
    cases = settings.cases() if runnable else None  # drawn once (here, not in the worker threads): same for all
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max(1, min(jobs, len(todo)))) as ex:
        check = stack.enter_context(checker()) if runnable else None
        futures = {ex.submit(_grade_one, sub, settings, check, cases): sub for sub in todo}
        try:
            for done, fut in enumerate(as_completed(futures), 1):
                sub, res = futures[fut], fut.result()
                atomic_write_json(_result_path(out, sub), res)  # kept at once: a killed grading resumes from here
                results[sub.student] = res
                progress(
                    f"[{done}/{len(todo)}] {sub.student}: {res['earned']:g}/{res['total']:g} points, "
                    f"{res['seconds']:.1f} s" + (f"  ({res['note'][:120]})" if res["note"] else "")
                )
        except BaseException:  # Ctrl-C: the submissions not started yet are dropped, the running ones finish
            for fut in futures:
                fut.cancel()
            raise
    ordered = [results[s.student] for s in subs]
    seconds = time.perf_counter() - start
    return ClassResult(ordered, len(runnable), reused, len(todo) - len(runnable), seconds)


def _result_path(out: Path, sub: intake.Submission) -> Path:
    return out / "results" / f"{sub.student}.json"


def _refuse_foreign(out: Path) -> None:
    """A DojoError unless `out` is absent, empty or a grading folder (it has grading.json)."""
    if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()) and not (out / "grading.json").is_file():
        raise DojoError(
            f"--out {out} is a folder with other files in it (no grading.json: not written by torchdojo grade)",
            "pass a new or empty folder, or the folder of an earlier grading to resume it",
        )


@contextlib.contextmanager
def grading_folder(out: Path, submissions: Path) -> Iterator[Path]:
    """OUT created (or an earlier grading folder reused) and locked for this process; OUT must not be inside
    SUBMISSIONS (its files would become students) nor a non-empty folder that is not a grading folder."""
    import fcntl

    out, submissions = Path(out), Path(submissions)
    if not submissions.is_dir():
        raise DojoError(f"{submissions} is not a folder", "pass the folder holding one .py, folder or .zip per student")
    if out.resolve() == submissions.resolve() or out.resolve().is_relative_to(submissions.resolve()):
        raise DojoError(f"--out {out} is inside the submissions folder {submissions}", "write the grades elsewhere")
    if submissions.resolve().is_relative_to(out.resolve()):
        raise DojoError(f"the submissions folder {submissions} is inside --out {out}", "write the grades elsewhere")
    if out.exists() and not out.is_dir():
        raise DojoError(f"--out {out} is a file", "pass a folder (it is created if needed)")
    _refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DojoError(
                f"{out} is being written by another torchdojo grade", "wait for it to finish, or use another --out"
            ) from None
        _refuse_foreign(out)
        if not (out / "grading.json").is_file():  # marks the folder as ours from the start (a kill resumes)
            atomic_write_json(out / "grading.json", {"status": "grading started"})
        yield out
    finally:
        os.close(fd)
