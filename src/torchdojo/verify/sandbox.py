"""Check a submission in isolation: the public API of the autograder (`check` and `grade` use it).

`check_isolated(target, "FILE.py:Class")` draws the cases and computes the reference HERE, in the
grader's process, sends only tensors to a jailed child that imports and runs the submission
(`torchdojo.verify.jail`, `torchdojo.verify.child`), reads back only tensors, and compares them here.
Without a server each call starts a fresh interpreter (`python -m torchdojo.verify.child`, seconds of
torch import); inside `with ForkServer() as server:` each call costs one fork of a process that has
imported torch already. Both paths run the same jail and harness and give the same verdicts.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchdojo.errors import DojoError
from torchdojo.verify.cases import PUBLIC_SEEDS, Prepared, draw_cases, prepare
from torchdojo.verify.core import Case, Tally, Target, describe_case
from torchdojo.verify.job import Source, copy_submission, new_job_dir, resolve, valid_case, write_job
from torchdojo.verify.judge import Malformed, read_regular, read_result, tally_cases
from torchdojo.verify.load import LoadFailure
from torchdojo.verify.options import Limits
from torchdojo.verify.rules import RULES, forbidden_ops, rule_properties, source_violations

_MB = 1024 * 1024
DEFAULT_LIMITS = Limits()


@dataclasses.dataclass
class PropertyResult:
    name: str
    passed: bool
    runs: int
    detail: str  # first failing case + reason, or the worst error
    case: dict | None = None  # the first failing case (to build a reproduce command)
    passed_runs: int = 0  # how many of the runs passed
    problem: str | None = None  # the first failure's reason alone (detail = its case + this)
    worst: dict[str, float] = dataclasses.field(default_factory=dict)  # max |ours - torch| per dtype


@dataclasses.dataclass
class Verdict:
    target: str
    submission: str  # the "FILE.py:Class" spec
    properties: list[PropertyResult]
    failure: str | None  # process-level reason, e.g. "timed out after 20 s"
    stdout: str
    stderr: str
    seconds: float
    failure_kind: str | None = None  # "load" (could not import/find the class) or "process"
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. "network not isolated on this platform"
    cases: int = 0
    seeds: tuple[int, ...] = PUBLIC_SEEDS

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.properties) and all(p.passed for p in self.properties)


def _scrubbed_env() -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _run_fresh(job_dir: Path, limits: Limits) -> None:
    """One fresh interpreter supervising the jailed run; it writes status.json (or nothing if it died)."""
    cmd = [sys.executable, "-m", "torchdojo.verify.child", str(job_dir), json.dumps(dataclasses.asdict(limits))]
    proc = subprocess.Popen(
        cmd, env=_scrubbed_env(), cwd=job_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        proc.wait(timeout=limits.wall_s + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ForkServer:
    """A helper process with torch imported once; each check is one fork of it (see torchdojo.verify.server)."""

    def __init__(self, start_timeout_s: float = 180.0):
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._waiting: dict[int, threading.Event] = {}
        self._next = 0
        self.restarts = 0

    def __enter__(self) -> "ForkServer":
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "torchdojo.verify.server"], env=_scrubbed_env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        ready = threading.Event()
        threading.Thread(target=self._read, args=(self._proc, ready), daemon=True).start()
        if not ready.wait(self.start_timeout_s) or not self.alive:
            self.close()
            raise DojoError("the check server did not start", "run `python -m torchdojo.verify.server` to see why")

    def _read(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # only supervisors write here, one JSON line each; anything else is not an answer
            if msg.get("ready"):
                ready.set()
            elif (ev := self._waiting.get(msg.get("id"))) is not None:
                ev.set()
        for ev in list(self._waiting.values()):  # the server died: wake everyone (they see no status)
            ev.set()

    def run(self, job_dir: Path, limits: Limits) -> None:
        """Have the server supervise one job; returns when it is done (status.json written) or lost."""
        with self._lock:
            if not self.alive:
                self.restarts += 1
                self._start()
            self._next += 1
            job_id, ev = self._next, threading.Event()
            self._waiting[job_id] = ev
            req = {"id": job_id, "job_dir": str(job_dir), "limits": dataclasses.asdict(limits)}
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps(req) + "\n").encode())
                self._proc.stdin.flush()
            except OSError:
                ev.set()
        ev.wait(limits.wall_s + 60)
        self._waiting.pop(job_id, None)

    def check(self, target: str, spec: str, **kwargs: Any) -> "Verdict":
        """check_isolated through this server."""
        return check_isolated(target, spec, server=self, **kwargs)

    def close(self) -> None:
        """Stop the server (its supervisors finish their jobs)."""
        if self._proc is None:
            return
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


_THREADS = {"users": 0, "saved": 1}
_THREADS_LOCK = threading.Lock()


def _one_thread(delta: int) -> None:
    """torch on one thread while any check runs here (tiny tensors: more threads only cost synchronisation,
    x30 on a busy machine); the caller's setting is restored when the last concurrent check ends."""
    with _THREADS_LOCK:
        if _THREADS["users"] == 0 and delta > 0:
            _THREADS["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS["users"] += delta
        if _THREADS["users"] == 0:
            torch.set_num_threads(_THREADS["saved"])


def check_isolated(
    target: str,
    spec: str,
    *,
    max_examples: int = 50,
    seeds: Sequence[int] | None = None,
    allow_builtin: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    server: ForkServer | None = None,
    cases: Sequence[Case] | None = None,
) -> Verdict:
    """Run `spec` against `target` in a jailed child; the verdict is computed here from its tensors.

    `seeds` default to PUBLIC_SEEDS (what students run); other seeds draw hidden cases over the same
    properties. `cases` replaces the drawn cases (a `--case` to reproduce one failure).
    """
    from torchdojo.verify.targets import TARGETS

    if sys.platform != "linux":
        raise DojoError("isolated checks need Linux (namespaces, rlimits, pidfd, /proc)", "run check/grade on Linux")
    if target not in TARGETS:
        raise DojoError(f"unknown check target {target!r}", f"choose one of: {', '.join(TARGETS)}")
    if max_examples < 0:
        raise DojoError(f"max_examples must be >= 0, got {max_examples}")
    limits.validate()
    t, seeds = TARGETS[target], tuple(PUBLIC_SEEDS if seeds is None else seeds)
    start = time.monotonic()
    rule = None if allow_builtin else t.rules
    job_dir = new_job_dir()
    _one_thread(+1)
    try:
        try:
            src = resolve(spec, job_dir)
        except LoadFailure as e:
            return _load_failure(t, spec, str(e), rule, start, seeds)
        case_list = [valid_case(t, c) for c in cases] if cases is not None else draw_cases(t, seeds, max_examples)
        prepared = [prepare(t, c) for c in case_list]
        if src.copy_from is not None:
            copy_submission(src, job_dir / "submission")
        record = "rules (ops)" in rule_properties(rule)
        write_job(t, src, [p for p in prepared if not p.invalid], record, job_dir)
        if server is not None:
            server.run(job_dir, limits)
        else:
            _run_fresh(job_dir, limits)
        verdict = _assemble(t, spec, src, prepared, job_dir, limits, rule, start)
        verdict.seeds = seeds
        return verdict
    finally:
        _one_thread(-1)
        shutil.rmtree(job_dir, ignore_errors=True)


def _load_failure(t: Target, spec: str, msg: str, rule: str | None, start: float, seeds: tuple) -> Verdict:
    props = [PropertyResult(p, False, 0, f"not checked: {msg}") for p in [*t.properties(), *rule_properties(rule)]]
    return Verdict(t.name, spec, props, msg, "", "", time.monotonic() - start, "load", seeds=seeds)


def _status(job_dir: Path) -> dict[str, Any] | None:
    try:
        status = json.loads(read_regular(job_dir / "status.json", _MB))
        return status if isinstance(status, dict) else None
    except (Malformed, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _process_failure(status: dict[str, Any] | None, header: dict | None, why: str, limits: Limits) -> str | None:
    """The one process-level reason the run failed, most telling first; None when it ended normally."""
    if status is None:
        return "the grader lost the submission's run (no status came back)"
    sig = status.get("signal")
    if status.get("timed_out"):
        return f"timed out after {limits.wall_s:g} s"
    if status.get("output_exceeded"):
        return f"printed more than {limits.file_mb} MB (stdout and stderr together; the process was stopped)"
    if sig == "SIGXCPU":
        return f"used more than {limits.cpu_s:g} s of CPU time"
    if header is not None and header.get("oom"):
        return f"used more than {limits.memory_mb} MB of memory"
    if sig is not None:
        return f"the submission's process was killed by {sig}"
    if header is None:
        if why == "missing":
            return f"the submission ended the process (exit code {status.get('exit')}) before its results were written"
        return f"the submission's result file is {why}"
    if header.get("fatal"):
        return str(header["fatal"])
    if status.get("left_running"):
        n = status["left_running"]
        return f"left {n} process{'es' if n > 1 else ''} running after it finished (all killed)"
    return None


def _assemble(
    t: Target, spec: str, src: Source, prepared: list[Prepared], job_dir: Path, limits: Limits, rule: str | None,
    start: float,
) -> Verdict:  # fmt: skip
    status = _status(job_dir)
    header, tensors, why = None, {}, ""
    try:
        header, tensors = read_result(job_dir / "work" / "result.safetensors", limits.file_mb * _MB)
    except Malformed as e:
        why = str(e)
    failure = _process_failure(status, header, why, limits)
    kind = "process" if failure else None
    if header is not None and header.get("load_error") and failure is None:
        failure, kind = _unjail_paths(str(header["load_error"]), src, job_dir), "load"
    if header is not None and kind != "load":
        props = _from_tallies(t, tally_cases(t, prepared, header, tensors), header.get("class", "Class"))
    else:
        props = [PropertyResult(p, False, 0, f"not checked: {failure}") for p in t.properties()]
    props += _rules(rule, src, header, failure)
    st = status or {}
    return Verdict(
        t.name, spec, props, failure, _clip(st, "stdout"), _clip(st, "stderr"), time.monotonic() - start, kind,
        notes=list((header or {}).get("notes", [])), cases=len(prepared),
    )  # fmt: skip


def _unjail_paths(text: str, src: Source, job_dir: Path) -> str:
    """Messages name the student's own file, not the copy the child imported."""
    if src.copy_from is None:
        return text
    return text.replace(str(job_dir / "submission"), str(src.copy_from))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # terminal escapes and other control characters


def _clip(status: dict[str, Any], stream: str) -> str:
    """The kept output, control characters shown as U+FFFD (no escape sequence reaches a terminal), and a note
    saying how much more there was."""
    raw, total = str(status.get(stream, "")), int(status.get(f"{stream}_bytes", 0))
    kept = int(status.get(f"{stream}_kept", total))
    text = _CONTROL.sub("\ufffd", raw)
    return text + (f"\n[... {total - kept} more bytes not shown]" if total > kept else "")


def _from_tallies(t: Target, tallies: dict[str, Tally], cls_name: str) -> list[PropertyResult]:
    out = []
    for tally in tallies.values():
        if tally.first_failure is not None:
            case, msg = tally.first_failure
            detail = f"{describe_case(cls_name, t, case)}: {msg}"
            out.append(
                PropertyResult(tally.name, False, tally.runs, detail, dict(case), tally.passed, msg, tally.worst)
            )
        else:
            worst = ", ".join(f"{k} {v:.2g}" for k, v in sorted(tally.worst.items()))
            detail = f"worst |diff|: {worst}" if worst else ""
            detail = detail if tally.runs else "no case ran"
            out.append(PropertyResult(tally.name, tally.ok, tally.runs, detail, None, tally.passed, None, tally.worst))
    return out


def _rules(rule: str | None, src: Source, header: dict | None, failure: str | None) -> list[PropertyResult]:
    if rule is None:
        return []
    what = RULES[rule].what
    assert src.static_file is not None
    try:
        text = src.static_file.read_text(encoding="utf-8", errors="replace")
        hits = source_violations(text, rule, src.static_file.name)
    except OSError as e:
        hits = [f"the source could not be read ({e.strerror})"]
    props = [
        PropertyResult(
            "rules (source)", not hits, 1, "; ".join(hits[:5]) or f"{what}: nothing found", None, int(not hits)
        )
    ]
    if "rules (ops)" not in rule_properties(rule):
        return props
    ops = (header or {}).get("ops")
    counts = (header or {}).get("counts") or {}
    if not isinstance(ops, dict):
        props.append(PropertyResult("rules (ops)", False, 0, f"not checked: {failure or 'no op record came back'}"))
    elif not counts.get("forward"):
        ran = any(isinstance(c, dict) and not c.get("error") for c in (header or {}).get("cases", []))
        why = "no ATen op was recorded in forward (recorder bypassed?)" if ran else "not checked: forward never ran"
        props.append(PropertyResult("rules (ops)", False, int(ran), why))
    else:
        bad = forbidden_ops(ops, rule)
        detail = "; ".join(bad[:5]) or f"{what}: {len(ops)} distinct ATen ops, none forbidden"
        props.append(PropertyResult("rules (ops)", not bad, 1, detail, None, int(not bad)))
    return props
