"""Hostile: ends the process while being imported (a grader in the same process would exit 0)."""

import os

os._exit(0)
