"""`torchdojo list`: experiments (with the MISSION IDs they cover), models, datasets, augmentations."""

import argparse

NAME = "list"
HELP = "list experiments (with MISSION task IDs), models, datasets and augmentations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        nargs="?",
        choices=["experiments", "models", "datasets", "augmentations", "all"],
        default="all",
        help="what to list (default: all)",
    )


def main(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.table import Table

    from torchdojo.data import DATASETS
    from torchdojo.data.augment import AUGMENTATIONS
    from torchdojo.experiments import EXPERIMENTS
    from torchdojo.models import MODELS

    con = Console(width=None if sys.stdout.isatty() else 140)  # pipes: wide enough for one line a row
    if args.what in ("experiments", "all"):
        t = Table(title="experiments (torchdojo run NAME)")
        for col in ("name", "MISSION", "presets", "what it does"):
            t.add_column(col)
        for name in EXPERIMENTS:
            m = EXPERIMENTS.get(name)
            t.add_row(name, " ".join(m.MISSION_IDS), ", ".join(getattr(m, "PRESETS", {})) or "-", m.SUMMARY)
        con.print(t)
    if args.what in ("models", "all"):
        t = Table(title="models")
        t.add_column("name")
        t.add_column("description")
        for name in MODELS:
            doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
            t.add_row(name, doc[0] if doc else "")
        con.print(t)
    if args.what in ("datasets", "all"):
        t = Table(title="datasets (torchdojo data: where they are)")
        t.add_column("name")
        t.add_column("description")
        for name in DATASETS:
            t.add_row(name, DATASETS.get(name).description)
        con.print(t)
    if args.what in ("augmentations", "all"):
        t = Table(title="augmentations (--set augment=a,b)")
        t.add_column("name")
        t.add_column("description")
        for name in AUGMENTATIONS:
            doc = (AUGMENTATIONS.get(name).__doc__ or "").strip().splitlines()
            t.add_row(name, doc[0] if doc else "")
        con.print(t)
    return 0
