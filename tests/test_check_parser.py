"""`torchdojo --help` (and every command's) builds its parser without importing torch.

The `check`/`grade` choices and limit defaults come from the torch-free `torchdojo.verify.options`; these
tests keep it equal to what the checker really has.
"""

import dataclasses
import subprocess
import sys

from torchdojo.commands import check_cmd, grade_cmd
from torchdojo.verify import options, sandbox
from torchdojo.verify.targets import TARGETS


def test_the_torch_free_names_are_the_checkers_targets() -> None:
    assert options.TARGET_NAMES == tuple(TARGETS)
    assert sandbox.Limits is options.Limits  # one dataclass, imported by the sandbox
    assert list(options.LIMIT_FLAGS) == [f.name for f in dataclasses.fields(options.Limits)]


def _parsed(module: object, argv: list[str]) -> object:
    import argparse

    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_every_limit_flag_reaches_limits_in_check_and_grade() -> None:
    values = {"wall_s": 3.5, "cpu_s": 7.0, "memory_mb": 99, "file_mb": 5, "nproc": 4, "output_kb": 8}
    flags = [x for f, flag in options.LIMIT_FLAGS.items() for x in (flag, str(values[f]))]
    expected = options.Limits(**values)
    assert check_cmd.limits_from(_parsed(check_cmd, ["conv2d", "x.py:C", *flags])) == expected
    assert grade_cmd._limits(_parsed(grade_cmd, ["conv2d", "subs", "--out", "o", *flags])) == expected
    assert grade_cmd._limits(_parsed(grade_cmd, ["conv2d", "subs", "--out", "o"])) == options.Limits()


def test_building_the_cli_parser_does_not_import_torch() -> None:
    code = (
        "import sys, torchdojo.cli as c; c.build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'hypothesis') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
