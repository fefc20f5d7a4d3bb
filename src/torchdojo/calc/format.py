"""Render an Analysis (and a spec check) as a rich table, markdown, CSV or JSON."""

import csv
import io
import json
from typing import Any

from torchdojo.calc.graph import Analysis
from torchdojo.calc.receptive import RF
from torchdojo.calc.rules import CONVENTIONS

WEIGHT_OPS = ("conv", "linear", "matmul", "mha", "sdpa", "rnn", "rnncell", "opaque")  # what torchvision reports
COLUMNS = [
    "name",
    "type",
    "input",
    "output",
    "params",
    "trainable",
    "frozen",
    "MACs",
    "FLOPs",
    "act_bytes",
    "rf",
    "rf_path",
    "jump",
    "start",
]


def _shape(s: tuple[int, ...] | None) -> str:
    return "x".join(map(str, s)) if s is not None else "-"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


def rf_text(rf: RF) -> tuple[str, str, str]:
    """(size, jump, start) strings: '29' when every dim agrees, '29x13' otherwise; 'all' / '-'."""
    if rf is None:
        return "-", "-", "-"
    if all(d.whole for d in rf):
        return "all", "-", "-"

    def join(vals: list[str]) -> str:
        return vals[0] if len(set(vals)) == 1 else "x".join(vals)

    size = join(["all" if d.whole else _num(d.size) for d in rf])
    jump = join(["-" if d.whole else _num(d.jump) for d in rf])
    start = join(["-" if d.whole else _num(d.start) for d in rf])
    return size, jump, start


HEADERS = {"act_bytes": "act mem", "rf": "rf strict", "rf_path": "rf conv path"}


def rows(a: Analysis) -> list[dict[str, Any]]:
    """One dict per layer with raw numbers (shapes and fields as text; jump and start of the conv path)."""
    out = []
    for r in a.layers:
        size = rf_text(r.rf)[0]
        path, jump, start = rf_text(r.rf_path)
        out.append(
            {
                "name": r.name,
                "type": r.type,
                "input": ", ".join(_shape(s) for s in r.in_shapes) or "-",
                "output": _shape(r.out_shape),
                "params": r.params,
                "trainable": r.trainable,
                "frozen": r.frozen,
                "MACs": r.macs,
                "FLOPs": r.flops if r.counted else "not counted",
                "act_bytes": r.act_bytes,
                "rf": size,
                "rf_path": path,
                "jump": jump,
                "start": start,
            }
        )
    return out


def totals(a: Analysis) -> dict[str, Any]:
    """Whole-model totals; the fields are those of the last layer whose output runs over image positions."""
    last = a.last_spatial
    size = rf_text(last.rf)[0] if last else "-"
    path, jump, start = rf_text(last.rf_path) if last else ("-", "-", "-")
    return {
        "model": a.model,
        "mode": a.mode,
        "method": a.method,
        "note": a.note,
        "input": _shape(a.example_shape or (a.batch, *a.input_shape)),
        "params": a.total_params,
        "trainable": a.trainable_params,
        "frozen": a.total_params - a.trainable_params,
        "MACs": a.macs,
        "FLOPs": a.flops,
        "weight_MACs": sum(r.macs for r in a.layers if r.op in WEIGHT_OPS),
        "act_bytes": a.act_bytes,
        "rf_layer": last.name if last else "-",
        "rf": size,
        "rf_path": path,
        "jump": jump,
        "start": start,
        "not_counted": a.uncounted,
    }


def human(v: Any) -> str:
    """12,345,678 -> '12.35M'; bytes columns are handled by the caller."""
    if not isinstance(v, int) or isinstance(v, bool):
        return str(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return str(v)


def _bytes(v: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= div:
            return f"{v / div:.1f} {unit}"
    return f"{v} B"


def _px(size: str) -> str:
    return "all (every input pixel)" if size == "all" else f"{size} px"


def title(a: Analysis) -> str:
    """The table's title: which graph was measured (eval or training mode) and how."""
    how = "" if a.method == "fx graph" else f", {a.method}"
    return f"{a.model}: per-layer arithmetic ({a.mode} mode{how}, batch {a.batch})"


def summary_lines(a: Analysis) -> list[str]:
    t = totals(a)
    lines = [
        f"{t['model']} on input {t['input']} ({t['mode']} mode, {t['method']}): {t['params']:,} parameters "
        f"({t['trainable']:,} trainable, "
        f"{t['frozen']:,} frozen)",
        f"MACs {t['MACs']:,} ({human(t['MACs'])}), of which conv/linear/matmul/attention/recurrent "
        f"{t['weight_MACs']:,} "
        f"= {t['weight_MACs'] / 1e9:.3f} G (what torchvision's docs call GFLOPS); FLOPs {t['FLOPs']:,} "
        f"({human(t['FLOPs'])})",
        f"activation memory (sum of layer outputs) {_bytes(t['act_bytes'])}",
    ]
    if t["rf_layer"] != "-":
        lines.append(
            f"receptive field of {t['rf_layer']} (the last layer with spatial output): strict {_px(t['rf'])} "
            f"(every dependency), conv path {_px(t['rf_path'])} (the figure papers quote); jump {t['jump']}, "
            f"start {t['start']}"
        )
    elif a.gm is not None:
        lines.append("receptive field: - (no layer has spatial output)")
    if a.note:
        lines.append(f"receptive field: n/a. {a.note}")
    if a.opaque:
        lines.append(f"counted by FlopCounterMode (convs/matmuls inside only): {', '.join(a.opaque)}")
    if t["not_counted"]:
        lines.append(f"no counting rule (0 MACs/FLOPs) for: {', '.join(t['not_counted'])}")
    return lines


def _display(r: dict[str, Any]) -> dict[str, str]:
    return {k: (_bytes(v) if k == "act_bytes" else f"{v:,}" if isinstance(v, int) else str(v)) for k, v in r.items()}


def markdown(a: Analysis, checks: list[dict[str, Any]] | None = None) -> str:
    lines = [
        f"{title(a)}",
        "",
        "| " + " | ".join(HEADERS.get(c, c) for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows(a):
        d = _display(r)
        lines.append("| " + " | ".join(d[c].replace("|", "/") for c in COLUMNS) + " |")
    lines += ["", *[f"- {s}" for s in summary_lines(a)]]
    if checks:
        lines += ["", "| layer | quantity | closed form | measured | match |", "|---|---|---|---|---|"]
        lines += [
            f"| {c['layer']} | {c['quantity']} | {c['formula']} | {c['measured']} | {'yes' if c['match'] else 'NO'} |"
            for c in checks
        ]
    return "\n".join([*lines, "", f"Conventions: {CONVENTIONS}", ""])


def to_csv(a: Analysis) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows(a):
        w.writerow(r)
    t = totals(a)
    w.writerow(
        {
            "name": "TOTAL",
            "type": "",
            "input": t["input"],
            "output": "",
            "params": t["params"],
            "trainable": t["trainable"],
            "frozen": t["frozen"],
            "MACs": t["MACs"],
            "FLOPs": t["FLOPs"],
            "act_bytes": t["act_bytes"],
            "rf": t["rf"],
            "rf_path": t["rf_path"],
            "jump": t["jump"],
            "start": t["start"],
        }
    )
    return buf.getvalue()


def to_json(a: Analysis, checks: list[dict[str, Any]] | None = None) -> str:
    doc = {"totals": totals(a), "layers": rows(a), "conventions": CONVENTIONS}
    if checks is not None:
        doc["spec_checks"] = checks
    return json.dumps(doc, indent=1, default=str)


def print_rich(a: Analysis, checks: list[dict[str, Any]] | None = None, console: Any = None) -> None:
    """The default view: a rich table per layer, the totals, the spec check and the conventions."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    if console is None and not con.is_terminal:
        con = Console(width=220)  # piped or redirected: keep one row per layer instead of folding at 80
    t = Table(title=title(a), show_lines=False)
    for c in COLUMNS:
        t.add_column(
            HEADERS.get(c, c),
            justify="left" if c in ("name", "type") else "right",
            overflow="fold",
        )
    for r in rows(a):
        d = _display(r)
        t.add_row(*[d[c] for c in COLUMNS])
    tt = totals(a)
    t.add_row(
        "TOTAL",
        "",
        "",
        "",
        f"{tt['params']:,}",
        f"{tt['trainable']:,}",
        f"{tt['frozen']:,}",
        f"{tt['MACs']:,}",
        f"{tt['FLOPs']:,}",
        _bytes(tt["act_bytes"]),
        tt["rf"],
        tt["rf_path"],
        tt["jump"],
        tt["start"],
        style="bold",
    )
    con.print(t)
    for line in summary_lines(a):
        con.print(line, highlight=False)
    if checks:
        ct = Table(title="spec: closed form vs measured")
        for c in ("layer", "quantity", "closed form", "measured", "match"):
            ct.add_column(c, overflow="fold")
        for c in checks:
            ct.add_row(
                c["layer"],
                c["quantity"],
                c["formula"],
                str(c["measured"]),
                "[green]yes[/]" if c["match"] else "[red]NO[/]",
            )
        con.print(ct)
    con.print(f"[dim]Conventions: {CONVENTIONS}[/]", highlight=False)
