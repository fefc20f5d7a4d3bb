"""What the `check` and `grade` command lines offer, without importing torch (so `torchdojo --help` stays fast).

`TARGET_NAMES` are the keys of `torchdojo.verify.targets.TARGETS`, in its order (a test keeps them equal);
`Limits` is what one submission run may use, with the flag of each field in `LIMIT_FLAGS`.
"""

import dataclasses

from torchdojo.errors import DojoError

TARGET_NAMES: tuple[str, ...] = (
    "conv2d",
    "conv2d-backward",
    "conv-transpose",
    "ste",
    "rnn-cell",
    "reset-cell",
    "lipschitz-rnn",
)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one submission run may use; every field has a check/grade flag."""

    wall_s: float = 20.0  # wall clock for the whole submission run
    cpu_s: float = 60.0  # RLIMIT_CPU
    memory_mb: int = 4096  # address space on top of the loaded harness (RLIMIT_AS)
    file_mb: int = 16  # RLIMIT_FSIZE; also the cap on stdout + stderr together
    nproc: int = 32  # processes/threads it may add (RLIMIT_NPROC over its user's count)
    output_kb: int = 64  # kept of stdout and of stderr each (the rest is counted, not kept)

    def validate(self) -> None:
        """DojoError naming the first limit that is not positive."""
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise DojoError(f"limit {f.name} must be > 0, got {getattr(self, f.name)}")


LIMIT_FLAGS: dict[str, str] = {  # Limits field: its flag, the same in `check` and `grade`
    "wall_s": "--timeout",
    "cpu_s": "--cpu-s",
    "memory_mb": "--memory-mb",
    "file_mb": "--file-mb",
    "nproc": "--nproc",
    "output_kb": "--output-kb",
}
