"""User-facing errors: a short message naming the problem and the fix, shown without a traceback."""


class DojoError(Exception):
    """An error caused by the user's input or environment; the CLI prints it and exits non-zero."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class DataMissingError(DojoError):
    """A dataset could not be found in any of the places looked at."""


class ChecksumError(DojoError):
    """A file's checksum does not match the published one."""


class CheckpointError(DojoError):
    """A checkpoint could not be read (truncated, corrupt or from another model)."""


class TrainingDiverged(DojoError):
    """The loss became NaN or infinite."""

    exit_code = 3
