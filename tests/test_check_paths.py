"""The two ways a check runs give the same verdict: a fresh interpreter (`torchdojo check`, --json) and the
fork server (`grade`, `ForkServer.check`)."""

import argparse
import json
from pathlib import Path

import pytest

from torchdojo.commands import check_cmd
from torchdojo.verify.sandbox import ForkServer

SUBMISSIONS = Path(__file__).parent / "submissions"


def check(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    p = argparse.ArgumentParser()
    check_cmd.add_arguments(p)
    rc = check_cmd.main(p.parse_args(list(argv)))
    return rc, capsys.readouterr().out


@pytest.fixture(scope="module")
def server_verdicts() -> dict[str, object]:
    with ForkServer() as s:
        return {
            name: s.check("conv2d", f"{SUBMISSIONS / name}:Conv2d", max_examples=2) for name in ("builtin_fconv.py",)
        }


def test_fresh_interpreter_json_agrees_with_the_fork_server(capsys: pytest.CaptureFixture, server_verdicts) -> None:
    rc, out = check(capsys, "conv2d", f"{SUBMISSIONS / 'builtin_fconv.py'}:Conv2d", "--max-examples", "2", "--json")
    fresh = json.loads(out)
    assert rc == 1 and fresh["ok"] is False and fresh["failure"] is None
    served = server_verdicts["builtin_fconv.py"]
    assert [(p["name"], p["passed"], p["runs"]) for p in fresh["properties"]] == [
        (p.name, p.passed, p.runs) for p in served.properties
    ]
    assert [p["detail"] for p in fresh["properties"]][-2:] == [p.detail for p in served.properties][-2:]
