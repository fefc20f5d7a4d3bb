"""The fork server under load and failure: concurrent checks from threads, and a server that died is restarted."""

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torchdojo.verify.sandbox import ForkServer, Limits

SUBMISSIONS = Path(__file__).parent / "submissions"
LIMITS = Limits(wall_s=5)


def spec(name: str) -> str:
    return f"{SUBMISSIONS / name}.py:Conv2d"


def test_concurrent_checks_and_a_restart_after_the_server_died() -> None:
    names = ["correct_conv", "endless_loop", "exit_in_forward", "builtin_fconv", "correct_conv"]
    with ForkServer() as server:
        with ThreadPoolExecutor(3) as pool:
            verdicts = list(pool.map(lambda n: server.check("conv2d", spec(n), max_examples=1, limits=LIMITS), names))
        assert [v.ok for v in verdicts] == [True, False, False, False, True]
        assert verdicts[1].failure == "timed out after 5 s" and "ended the process" in verdicts[2].failure
        assert {p.name for p in verdicts[3].properties if not p.passed} == {"rules (source)", "rules (ops)"}
        os.killpg(server._proc.pid, signal.SIGKILL)  # the server dies (a jailed nobody cannot do this)
        server._proc.wait()
        assert not server.alive
        v = server.check("conv2d", spec("correct_conv"), max_examples=1, limits=LIMITS)
        assert v.ok and server.restarts == 1 and server.alive
    assert not server.alive
