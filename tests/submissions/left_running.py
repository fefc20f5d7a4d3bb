"""Hostile: starts a process in its own session at import and leaves it running (correct otherwise)."""

import subprocess

from correct_conv import Conv2d  # noqa: F401

subprocess.Popen(["sleep", "317.25"], start_new_session=True)
