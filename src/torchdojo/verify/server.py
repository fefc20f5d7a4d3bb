"""The fork server: `python -m torchdojo.verify.server`, started by `ForkServer` with a clean interpreter.

It imports torch and the harness once, says "ready", then reads one JSON request per line from stdin
({"id", "job_dir", "limits"}). Each request gets its own supervisor process (a fork: no import cost),
which runs `jail.supervise`, writes the job's status.json and answers {"id"} on stdout (one short line,
written atomically by a single write). The server itself never imports a submission, so nothing a
submission does (patching torch, changing the default dtype, exiting) reaches the next one.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from torchdojo.verify import child, jail


def _serve_one(request: dict) -> None:
    job_dir = Path(request["job_dir"])
    try:
        jail.write_status(job_dir, jail.supervise(job_dir, request["limits"], child.run_job))
    finally:
        os.write(1, (json.dumps({"id": request["id"]}) + "\n").encode())
        os._exit(0)


def main() -> None:
    """Serve requests until stdin closes."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    os.write(1, b'{"ready": true}\n')
    for line in sys.stdin:
        request = json.loads(line)
        if os.fork() == 0:
            _serve_one(request)
    os._exit(0)  # stdin closed: nothing to flush or clean, and torch's interpreter shutdown takes seconds


if __name__ == "__main__":
    main()
