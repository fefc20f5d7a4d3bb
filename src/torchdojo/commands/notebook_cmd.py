"""`torchdojo notebook EXPERIMENT -o FILE.ipynb`: the experiment as an executed Jupyter notebook."""

import argparse

NAME = "notebook"
HELP = "write (and execute) a Jupyter notebook that runs an experiment and shows its report section by section"
DESCRIPTION = """Write a notebook that runs EXPERIMENT through the Python API (torchdojo.run) and then shows the
run's report in sections, one per part of the report (the course items): the report's headings and text as
markdown cells, its figures and tables as cell outputs. It is executed (nbclient, in a kernel of this Python)
unless --no-execute; the kernel works in the notebook's folder, so a relative --runs-dir is under it.
Settings are checked as `torchdojo run` checks them, before a kernel starts.
Examples:
  torchdojo notebook ladder --scale smoke -o ladder.ipynb
  torchdojo notebook rnn --set train.epochs=3 -o rnn.ipynb
  torchdojo notebook transfer --preset cifar10-resnet18 --no-execute -o transfer.ipynb"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name (torchdojo list experiments)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.ipynb", help="the notebook to write")
    p.add_argument(
        "--scale", default="small", choices=["smoke", "small", "full"], help="size of the run (default: small)"
    )
    p.add_argument("--preset", default=None, help="a named preset of the experiment")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a config setting; repeatable"
    )
    p.add_argument("--no-execute", dest="execute", action="store_false", help="write the notebook without running it")
    p.add_argument("--runs-dir", default="runs", help="where the run folder goes, from the notebook's folder")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=None, help="folder with datasets (looked at first)")
    p.add_argument("--download", action="store_true", help="allow downloading a dataset that is not found locally")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torchdojo.notebook import write

    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None  # the kernel runs elsewhere
    path = write(
        args.experiment,
        args.output,
        scale=args.scale,
        preset=args.preset,
        settings=list(args.overrides),
        execute=args.execute,
        runs_dir=args.runs_dir,
        device=args.device,
        data_dir=data_dir,
        download=args.download,
    )
    print(f"notebook: {path}" + ("" if args.execute else " (not executed)"))
    return 0
