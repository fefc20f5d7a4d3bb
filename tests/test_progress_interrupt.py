"""Ctrl-C in a real `torchdojo run` prints the exact command that resumes the run, and that command resumes it."""

import shlex
import signal
import subprocess
import sys
import time

from torchdojo import runs


def test_ctrl_c_prints_the_exact_resume_command_and_it_resumes(tmp_path):
    args = ["run", "ladder", "--scale", "smoke", "--rungs", "logreg", "--set", "dataset=digits"]
    args += ["--set", "train.epochs=4", "--runs-dir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "torchdojo", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("ladder/*/checkpoints/logreg/last.pt")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    (run,) = (tmp_path / "ladder").iterdir()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == f"interrupted; finished epochs are kept. Resume with: torchdojo run ladder --resume {run}"
    command = shlex.split(last.partition("Resume with: ")[2])
    assert command[0] == "torchdojo"
    done = subprocess.run([sys.executable, "-m", "torchdojo", *command[1:], "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (run / "summary.json").exists()
    rows = runs.read_metrics(run)
    assert [(r["stage"], r["epoch"]) for r in rows] == [(s, e) for s in ("logreg",) for e in range(1, 5)]
