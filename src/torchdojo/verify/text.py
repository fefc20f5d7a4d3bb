"""The text report of a Verdict (what `torchdojo check` prints): one line per property, details under failures."""

import json

from torchdojo.verify.core import TOLERANCE
from torchdojo.verify.sandbox import Limits, Verdict

_DEFAULT = Limits()


def reproduce_command(verdict: Verdict, case: dict) -> str:
    """The `torchdojo check` command that runs exactly this case again (same target, same submission)."""
    return f"torchdojo check {verdict.target} {verdict.submission} --case '{json.dumps(case, separators=(', ', ': '))}'"


def _header(verdict: Verdict, reference: str, limits: Limits, one_case: bool) -> list[str]:
    seeds = ", ".join(map(str, verdict.seeds))
    return [
        f"torchdojo check {verdict.target}: {verdict.submission} against {reference}",
        f"  {verdict.cases} configurations" + (" (one --case)" if one_case else f", seeds {seeds}"),
        "  pass when |ours - torch| <= tol * (1 + |torch|) element-wise and the dtype is torch's, tol = "
        + ", ".join(f"{v:g} ({k})" for k, v in TOLERANCE.items()),
        f"  run isolated: {limits.wall_s:g} s wall, {limits.cpu_s:g} s CPU, {limits.memory_mb} MB memory, "
        f"{limits.file_mb} MB files/output, {limits.nproc} extra processes",
        *(f"  note: {n}" for n in verdict.notes),
        "",
    ]


def format_verdict(verdict: Verdict, reference: str, limits: Limits = _DEFAULT, one_case: bool = False) -> str:
    """The report: header, the process-level failure if any, then PASS/FAIL per property and the summary."""
    lines = _header(verdict, reference, limits, one_case)
    if verdict.failure:
        lines += [f"FAIL  {'load' if verdict.failure_kind == 'load' else 'run'}: {verdict.failure}", ""]
    width = max((len(p.name) for p in verdict.properties), default=4)
    shown = None  # the case last printed in full: a property failing on it again names only its problem
    for p in verdict.properties:
        head = f"{'PASS' if p.passed else 'FAIL'}  {p.name:<{width}}  {p.passed_runs}/{p.runs} passed"
        if p.case is None:
            detail = "not checked" if verdict.failure and not p.runs else p.detail
            lines.append(head + (f"  {detail}" if detail else ""))
            continue
        lines.append(head)
        repro = reproduce_command(verdict, p.case)
        if repro == shown:
            lines.append(f"      first failing: the configuration above; problem: {p.problem}")
            continue
        shown = repro
        lines += [
            f"      first failing: {p.detail[: len(p.detail) - len(p.problem or '') - 2]}",
            f"      problem: {p.problem}",
            f"      reproduce: {repro}",
        ]
    failed = [p.name for p in verdict.properties if not p.passed]
    lines += [
        "",
        f"{len(verdict.properties) - len(failed)}/{len(verdict.properties)} properties pass"
        + (f"; failing: {', '.join(failed)}" if failed else "")
        + (f"; the run failed: {verdict.failure}" if verdict.failure else ""),
    ]
    return "\n".join(lines)


def format_output(verdict: Verdict, limits: Limits = _DEFAULT) -> str:
    """The submission's own stdout/stderr, clearly apart from the verdict (empty when it printed nothing)."""
    parts = []
    for name, text in (("stdout", verdict.stdout), ("stderr", verdict.stderr)):
        if text.strip():
            parts += [f"--- the submission's {name} (first {limits.output_kb} KB) ---", text.rstrip()]
    return "\n".join(parts)
