"""`torchdojo run EXPERIMENT`: run an experiment end to end into a run folder with its report."""

import argparse
import sys

NAME = "run"
HELP = "run an experiment end to end and write its run folder and report.html"
DESCRIPTION = """Run an experiment (see `torchdojo list`) at a scale:
  smoke  seconds, for tests;  small  minutes on a 2-core CPU (default);  full  the seed's own settings.
Override any config field with --set key=value (nested: --set train.lr=0.01; lists: --set rungs=mlp,cnn).
Your settings win over every default (scale, preset, a stage's or rung's own); a setting the experiment does
not use, an out-of-range value, NaN or inf is refused before anything runs. config.json records, under
"stages", the training config each stage really ran with.
Progress: in a terminal (or Jupyter) a live bar per epoch and evaluation with the running loss, and what runs
in between (data loading, figures, the report); in a log one line per epoch; --quiet prints nothing. Ctrl-C
keeps the finished epochs and prints the command that resumes the run. TensorBoard: RUN_DIR/tensorboard.
Examples:
  torchdojo run ladder
  torchdojo run ladder --scale smoke --rungs logreg,cnn --set train.epochs=2
  torchdojo run ladder --preset cifar10 --data-dir ~/data --download
  torchdojo run metric-learning --seeds 5     # 5 seeds: intervals, and comparisons the seeds support
  torchdojo run ladder --resume runs/ladder/20261123-101500-ab12cd"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name (torchdojo list experiments)")
    p.add_argument("--scale", default=None, choices=["smoke", "small", "full"], help="size of the run (default: small)")
    p.add_argument("--preset", default=None, help="a named preset of the experiment (e.g. ladder's cifar10)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field; repeatable",
    )
    p.add_argument(
        "--rungs",
        default=None,
        help="comma-separated subset of rungs: the same as --set rungs=... (giving both is an error)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="run the experiment N times (seeds seed..seed+N-1, each in RUN_DIR/seeds/seed-K) and report mean, "
        "std and 95%% intervals over them, comparing regimes seed by seed (default: 1, one run)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=None, help="folder with datasets (looked at first)")
    p.add_argument("--download", action="store_true", help="allow downloading a dataset that is not found locally")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip dataset checksum verification")
    p.add_argument("--runs-dir", default="runs", help="where run folders are created (default: ./runs)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run in its folder (config is read from it)",
    )
    p.add_argument(
        "--ddp-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="under torchrun: how long a process waits for the others before the job stops with an error "
        "(default: $TORCHDOJO_DDP_TIMEOUT, else 600)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output (bars, epoch lines, announcements)")
    p.add_argument("--config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    import json

    from torchdojo import progress

    if not args.quiet and not args.config:  # the seconds before the first line: say what they are
        progress.status(f"starting {args.experiment}: importing PyTorch, recording the environment")

    from torchdojo.config import to_dict
    from torchdojo.engine import keep_freed_memory
    from torchdojo.errors import DojoError
    from torchdojo.experiments import EXPERIMENTS
    from torchdojo.experiments.base import build_config, run_experiment

    module = EXPERIMENTS.get(args.experiment)
    overrides = list(args.overrides)

    if args.rungs:
        if any(o.partition("=")[0].strip() == "rungs" for o in overrides):
            raise DojoError(
                "--rungs and --set rungs=... were both given",
                "give the rungs once: --rungs a,b is the same as --set rungs=a,b",
            )
        overrides.append(f"rungs={args.rungs}")
    if args.config:
        cfg = build_config(module, args.scale or "small", args.preset, overrides)
        print(json.dumps(to_dict(cfg), indent=2))
        unused = getattr(module, "UNUSED", {})
        if unused:
            print(f"not used by {args.experiment} (refused if set): {', '.join(unused)}", file=sys.stderr)
        return 0
    from torchdojo import distributed

    distributed.set_timeout(args.ddp_timeout)
    distributed.timeout_seconds()  # a bad $TORCHDOJO_DDP_TIMEOUT is refused before anything runs
    keep_freed_memory()  # process-wide allocator tuning: the CLI's choice, never the library's
    with distributed.faults_as_errors(args.experiment, args.runs_dir, args.resume):  # a hung rank: an error
        path = run_experiment(
            module,
            scale=args.scale,
            preset=args.preset,
            overrides=overrides,
            device=args.device,
            data_dir=args.data_dir,
            download=args.download,
            verify=args.verify,
            runs_root=args.runs_dir,
            resume=args.resume,
            verbose=not args.quiet,
            seeds=args.seeds,
        )
    import os

    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the job, not one per process
        print(f"run folder: {path}", file=sys.stderr)
        print(f"report:     {path / 'report.html'}")
    return 0
