"""The `torchdojo` command line: one sub-command per module in torchdojo.commands."""

import argparse
import importlib
import json
import os
import shlex
import sys
from pathlib import Path

from torchdojo.errors import DojoError

# Explicit list: the CLI is generated from it (one module per command).
COMMAND_MODULES = [
    "list_cmd",
    "run_cmd",
    "report_cmd",
    "compare_cmd",
    "data_cmd",
    "calc_cmd",
    "predict_cmd",
    "describe_cmd",
    "check_cmd",
    "grade_cmd",
    "explain_cmd",
    "export_cmd",
    "notebook_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchdojo",
        description="Run a deep-learning course's experiments end to end and write their reports; verify "
        "hand-written layers against PyTorch; answer shape/param/FLOP/receptive-field questions.",
        epilog="Start with `torchdojo list`, then `torchdojo run ladder`. `torchdojo COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"torchdojo.commands.{name}")
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        return _run(args)
    except DojoError as e:
        print(f"error: {e.problem}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
            print(f"interrupted; {_kept_and_resume()}", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:  # a model or batch sized beyond this machine: say so
        if not _out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:240]
        print(f"error: out of memory: {first}", file=sys.stderr)
        print(
            "  fix: lower the sizes you set (batch_size, hidden sizes, image_size, ...) or use a machine with more "
            f"memory; {_kept_and_resume()}",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace) -> int:
    """The command, with whatever progress it left on screen cleared before its exit status or error prints."""
    from torchdojo import progress

    try:
        return int(args._main(args) or 0)
    finally:
        progress.clear()


def _kept_and_resume() -> str:
    """What is left of the run this process was writing, and the exact command that continues it."""
    from torchdojo.runs import current_run

    path = current_run()
    if path is None or not (path / "config.json").exists():  # no run folder (or one discarded as empty)
        return "no run folder was written, so there is nothing to resume"
    top = path.parent.parent  # a repeated run (--seeds) is resumed from its own folder, not a seed's
    if path.parent.name == "seeds" and _config(top).get("seeds") is not None:
        path = top
    if (path / "summary.json").exists():
        return f"the run in {path} had finished"
    experiment = _config(path).get("experiment", "EXPERIMENT")
    return f"finished epochs are kept. Resume with: torchdojo run {experiment} --resume {shlex.quote(str(path))}"


def _config(run_dir: Path) -> dict:
    """A run folder's config.json ({} when it cannot be read)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (CUDA) or the CPU allocator's failure."""
    if isinstance(e, MemoryError):
        return True
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)
