"""`torchdojo data`: which datasets are present locally, and where; `--download NAME` fetches one."""

import argparse

NAME = "data"
HELP = "show which datasets are present locally and where (or fetch one with --download NAME)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="extra folder to look in first")
    p.add_argument("--download", metavar="NAME", default=None, help="download this dataset into the user cache")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from torchdojo.data import DATASETS
    from torchdojo.data.base import candidate_dirs, find_dataset

    if args.download:
        print(find_dataset(DATASETS.get(args.download), args.data_dir, download=True))
        return 0
    t = Table(title="datasets")
    for col in ("name", "status", "where / how to get it"):
        t.add_column(col)
    for name in DATASETS:
        spec = DATASETS.get(name)
        if not spec.needs_files:
            t.add_row(name, "[green]present", spec.how_to_get.replace("install", "ships with"))
            continue
        # as `find_dataset` looks: the first folder with all of the files, or the first with only some of them
        found = next(
            (
                d
                for d in candidate_dirs(spec, args.data_dir)
                if d.is_dir() and len(spec.missing_in(d)) < len(spec.files)
            ),
            None,
        )
        if found is not None and spec.present_in(found):
            t.add_row(name, "[green]present", str(found))
        elif found is not None:
            t.add_row(name, "[red]incomplete", f"{found} lacks {', '.join(spec.missing_in(found))}")
        else:
            t.add_row(
                name,
                "[red]missing",
                spec.how_to_get + ("; or: torchdojo data --download " + name if spec.download else ""),
            )
    Console(width=160).print(t)
    return 0
