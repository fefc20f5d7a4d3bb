"""The job folder of one check: the submission's copy, job.json and job.safetensors (parent side).

The parent resolves the submission spec without importing anything, copies a file submission (and its
sibling .py files, up to a cap) where the jailed user can read it, and writes each case's tensors for the
child. The folder's `work/` is the only place the jailed process may write (its working directory).
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from torchdojo.errors import DojoError
from torchdojo.verify.cases import Prepared
from torchdojo.verify.core import Case, Target
from torchdojo.verify.jail import NOBODY
from torchdojo.verify.load import LoadFailure, split_spec

_MB = 1024 * 1024
_SIBLINGS_MAX = (200, 16 * _MB)  # sibling .py files copied with a submission: count, total bytes


@dataclasses.dataclass(frozen=True)
class Source:
    spec: str  # what the child imports
    static_file: Path | None  # the file the source rules read (in the parent)
    copy_from: Path | None  # the submission's folder, for file specs
    submission_dir: str | None  # frames under it are "the submission's line"


def find_module_file(module: str) -> Path | None:
    """The file `import module` would load, found on sys.path without importing anything."""
    parts = module.split(".")
    for entry in sys.path:
        base = Path(entry or os.getcwd()).joinpath(*parts)
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return cand.resolve()
    return None


def resolve(spec: str, job_dir: Path) -> Source:
    source, name = split_spec(spec)
    path = Path(source)
    if source.endswith(".py") or path.exists():
        if not path.is_file():
            raise LoadFailure(f"no such file: {source}")
        path = path.resolve()
        sub = job_dir / "submission"
        return Source(f"{sub / path.name}:{name}", path, path.parent, str(sub) + os.sep)
    found = find_module_file(source)
    if found is None:
        raise LoadFailure(f"no module {source} on the path (write FILE.py:Class for a file)")
    return Source(spec, found, None, str(found.parent) + os.sep)


def copy_submission(src: Source, dest: Path) -> None:
    """The submission file and (up to a cap) its sibling .py files, readable by the jailed user."""
    dest.mkdir()
    assert src.copy_from is not None and src.static_file is not None
    siblings = sorted(p for p in src.copy_from.glob("*.py") if p.is_file() and not p.is_symlink())
    if len(siblings) > _SIBLINGS_MAX[0] or sum(p.stat().st_size for p in siblings) > _SIBLINGS_MAX[1]:
        siblings = [src.static_file]
    for p in {*siblings, src.static_file}:
        shutil.copyfile(p, dest / p.name)
        os.chmod(dest / p.name, 0o644)


def write_job(target: Target, src: Source, valid: list[Prepared], record_ops: bool, job_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    cases = []
    for i, prep in enumerate(valid):
        for n, t in prep.params.items():
            tensors[f"{i}.param.{n}"] = t
        for n, t in zip(target.input_names, prep.inputs, strict=True):
            tensors[f"{i}.in.{n}"] = t
        tensors[f"{i}.gout"] = prep.grad_out
        c = prep.case
        cases.append(
            {
                "init": c.get("init", {}),
                "args": c.get("args", []),
                "dtype": c["dtype"],
                "param_names": list(prep.params),
                "input_names": list(target.input_names),
            }
        )
    job = {
        "spec": src.spec,
        "import_path": src.spec.rpartition(":")[0] if src.copy_from else None,
        "kind": target.kind,
        "reference_name": target.reference_name,
        "cases": cases,
        "record_ops": record_ops,
        "submission_dir": src.submission_dir,
        "sys_path": [p or os.getcwd() for p in sys.path],
    }
    (job_dir / "job.json").write_text(json.dumps(job))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(job_dir / "job.safetensors"))
    for p in (job_dir / "job.json", job_dir / "job.safetensors"):
        os.chmod(p, 0o644)


def new_job_dir() -> Path:
    job_dir = Path(tempfile.mkdtemp(prefix="torchdojo-check-"))
    os.chmod(job_dir, 0o755)  # the jailed user reads the job; only its work/ folder is writable to it
    work = job_dir / "work"
    work.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(work, NOBODY, NOBODY)
    return job_dir


_MAX_CASE_ELEMENTS = 1 << 22  # a given --case is checked before the parent allocates its tensors


def valid_case(t: Target, case: Case) -> Case:
    """A user-given case with a shape for every input, positive int sizes, at most 4M elements per tensor."""
    shape = case.get("shape")
    problem = None
    if not isinstance(shape, dict) or set(shape) != set(t.input_names):
        problem = f"its shape must name exactly the inputs {', '.join(t.input_names)}"
    elif case.get("dtype") not in ("float32", "float64") or not isinstance(case.get("seed"), int):
        problem = "its dtype must be float32 or float64 and its seed an int"
    else:
        for name, dims in shape.items():
            ok = isinstance(dims, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
            if not ok or math.prod(dims) > _MAX_CASE_ELEMENTS:
                problem = f"shape of {name} must be positive ints, at most {_MAX_CASE_ELEMENTS} elements"
    if problem:
        raise DojoError(f"case refused: {problem}", "copy the --case printed after 'reproduce:' unchanged")
    return dict(case)
