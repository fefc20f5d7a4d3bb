"""Points per property for `torchdojo grade`: a default per target, or a small TOML/JSON rubric file.

A rubric file names the points of every property the target checks (0 is allowed) and, optionally, the
target it was written for, so a conv2d rubric cannot grade an rnn-cell class by mistake:

    target = "conv2d"
    [points]
    parameters = 1
    forward = 4
    "grad x" = 2
    ...

(JSON: {"target": "conv2d", "points": {"forward": 4, ...}}.) A property the rubric does not name, a name the
target does not have, or a points value that is not a finite number >= 0 is an error naming it: what the
file says is exactly what is graded. A property earns its points only when it passed on every case.
"""

import dataclasses
import json
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path

from torchdojo.errors import DojoError

MAX_POINTS = 1000.0


@dataclasses.dataclass(frozen=True)
class Rubric:
    """Points per property name, in the target's report order; `source` says where they came from."""

    points: dict[str, float]
    source: str  # "default" or the rubric file's path

    @property
    def total(self) -> float:
        return sum(self.points.values())

    def earned(self, passed: dict[str, bool]) -> dict[str, float]:
        """Points per property: full points for a property that passed, 0 for one that failed or was not run."""
        return {name: pts if passed.get(name, False) else 0.0 for name, pts in self.points.items()}


def default_points(name: str) -> float:
    """The default weight of a property: forward 4, each gradient and each rules property 2, parameters 1."""
    if name == "forward":
        return 4.0
    if name == "parameters":
        return 1.0
    return 2.0  # "grad x", "grad weight", "rules (source)", "rules (ops)", and any other property


def default_rubric(properties: Sequence[str]) -> Rubric:
    return Rubric({name: default_points(name) for name in properties}, "default")


def _read(path: Path) -> dict:
    """The rubric file as a dict: TOML unless its name ends in .json."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise DojoError(f"cannot read the rubric {path}: {e.strerror}", "pass an existing TOML or JSON file") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text.decode())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise DojoError(f"the rubric {path} is not valid {kind}: {e}", "fix the file (see docs/GRADING.md)") from None
    if not isinstance(data, dict):
        raise DojoError(f"the rubric {path} must be a table/object with a 'points' table")
    return data


def _number(path: Path, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DojoError(f"the rubric {path} gives {name!r} the points {value!r}: a number is needed")
    if not 0 <= value <= MAX_POINTS:
        raise DojoError(f"the rubric {path} gives {name!r} {value} points: points are between 0 and {MAX_POINTS:g}")
    return float(value)


def load_rubric(path: Path, target: str, properties: Sequence[str], not_graded: Sequence[str] = ()) -> Rubric:
    """Read and validate a rubric for `target`, whose graded properties (in report order) are `properties`.

    `not_graded`: properties of the target that this grading does not check (the rules under
    --allow-builtin); the rubric may name them, so one file serves both ways, and they are dropped."""
    path = Path(path)
    data = _read(path)
    extra = sorted(set(data) - {"target", "points"})
    if extra:
        raise DojoError(
            f"the rubric {path} has unknown keys: {', '.join(extra)}",
            "a rubric has 'target' (optional) and a 'points' table",
        )
    if "target" in data and data["target"] != target:
        raise DojoError(
            f"the rubric {path} is for target {data['target']!r}, not {target!r}",
            "pass the rubric written for this target (or remove its 'target' line)",
        )
    points = data.get("points")
    if not isinstance(points, dict) or not points:
        raise DojoError(f"the rubric {path} has no 'points' table", "add [points] with one line per property")
    unknown = [name for name in points if name not in properties and name not in not_graded]
    if unknown:
        raise DojoError(
            f"the rubric {path} names properties that {target} does not have: {', '.join(map(repr, unknown))}",
            f"the properties of {target} are: {', '.join(map(repr, [*properties, *not_graded]))}",
        )
    missing = [name for name in properties if name not in points]
    if missing:
        raise DojoError(
            f"the rubric {path} gives no points for: {', '.join(map(repr, missing))}",
            "name every property (write 0 for one that should not count)",
        )
    return Rubric({name: _number(path, name, points[name]) for name in properties}, str(path))
