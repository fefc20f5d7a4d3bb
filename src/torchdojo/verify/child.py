"""The child side of a check: import the submission, run it on the parent's tensors, write tensors back.

This runs inside the jailed process (`torchdojo.verify.jail`), never in the grader. It reads `job.json`
(what to import and call) and `job.safetensors` (parameters, inputs, output gradients per case) from the
job folder and writes `result.safetensors` (outputs and gradients, plus a JSON header of messages and the
ATen ops recorded) into its own working directory. It computes no reference and judges nothing.

`python -m torchdojo.verify.child JOB_DIR LIMITS_JSON` is the path without a fork server: a fresh
interpreter imports torch, then supervises one jailed fork exactly as the server would.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch._dynamo  # noqa: F401 - a dispatch mode imports it on first use: once here, not per submission
from torch import nn

from torchdojo.verify.load import LoadFailure, describe_exception, load_class

RESULT = "result.safetensors"


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or "can't allocate memory" in text or "not enough memory" in text


def match_parameters(sub: nn.Module, ref: dict[str, torch.Tensor], reference: str) -> tuple[dict[str, Any], list[str]]:
    """Pair the reference's parameters with the submission's: same name (or name suffix) and shape, else shape."""
    ours = list(sub.named_parameters())
    pairs: dict[str, nn.Parameter] = {}
    problems: list[str] = []
    used: set[int] = set()
    if not ours:
        return pairs, [
            "the module has no nn.Parameter (register weights with nn.Parameter so optimizers and state_dict see them)"
        ]
    by_name = [
        lambda n, rn: n == rn,
        lambda n, rn: n.endswith("." + rn),
        lambda n, rn: n not in ref and not any(n.endswith("." + r) for r in ref),
    ]
    for rule in by_name:
        for name, rp in ref.items():
            if name in pairs:
                continue
            cand = next((p for n, p in ours if id(p) not in used and rule(n, name) and p.shape == rp.shape), None)
            if cand is not None:
                used.add(id(cand))
                pairs[name] = cand
    for name, rp in ref.items():
        if name not in pairs:
            same = dict(ours).get(name)
            problems.append(
                f"{name} has shape {tuple(same.shape)}, {reference} uses {tuple(rp.shape)}"
                if same is not None
                else f"no parameter of shape {tuple(rp.shape)} for {name} ({reference} has one); "
                f"found {', '.join(f'{n} {tuple(p.shape)}' for n, p in ours)}"
            )
    return pairs, problems


class _Harness:
    def __init__(self, job: dict[str, Any], tensors: dict[str, torch.Tensor], recorder: Any):
        self.job, self.tensors, self.rec = job, tensors, recorder
        self.out: dict[str, torch.Tensor] = {}
        self.oom = False
        self.path = Path(job["import_path"]) if job.get("import_path") else None

    def phase(self, name: str) -> None:
        if self.rec is not None:
            self.rec.phase = name

    def fail(self, phase: str, e: BaseException) -> dict[str, Any]:
        self.oom = self.oom or _is_oom(e)
        return {"error": {"phase": phase, "msg": describe_exception(e, self.path)}}

    def build(self, cls: type, case: dict[str, Any], dtype: torch.dtype) -> Any:
        """What the case calls: `cls.apply` for an autograd.Function, else `cls(**init)` in the case's dtype."""
        if self.job["kind"] == "function" and issubclass(cls, torch.autograd.Function):
            return cls.apply
        init = {k: tuple(v) if isinstance(v, list) else v for k, v in case["init"].items()}
        self.phase("constructor")
        sub = cls(**init)
        self.phase("harness")
        return sub.to(dtype)

    def case(self, cls: type, i: int, case: dict[str, Any]) -> dict[str, Any]:
        """Build, set the parameters, forward, backward; the answer's header entry (tensors go to self.out)."""
        dtype = getattr(torch, case["dtype"])
        params = {n: self.tensors[f"{i}.param.{n}"] for n in case["param_names"]}
        ins = [self.tensors[f"{i}.in.{n}"].clone().requires_grad_() for n in case["input_names"]]
        info: dict[str, Any] = {}
        try:
            call = self.build(cls, case, dtype)
        except (Exception, SystemExit) as e:
            return self.fail("constructor", e)
        pairs: dict[str, Any] = {}
        if self.job["kind"] == "module":
            pairs, problems = match_parameters(call, params, self.job["reference_name"])
            info["params"] = problems
            with torch.no_grad():
                for name, p in pairs.items():
                    p.copy_(params[name])
        self.phase("forward")
        try:
            y = call(*ins, *case.get("args", []))
        except (Exception, SystemExit) as e:
            return self.fail("forward", e)
        self.phase("harness")
        g = self.tensors[f"{i}.gout"]
        if not isinstance(y, torch.Tensor):
            return {**info, "out": f"output is a {type(y).__name__}, expected a tensor"}
        skip = "not checked: the forward output is wrong (see forward)"
        if y.shape != g.shape:  # the shape says it all: no need to send back a tensor of any size
            return {**info, "out_shape": list(y.shape), "skip": skip}
        self.out[f"{i}.out"] = y.detach().contiguous().clone()
        if not y.dtype.is_floating_point:
            return {**info, "skip": skip}
        self.phase("backward")
        try:
            (y * g.to(y.dtype)).sum().backward()
        except (Exception, SystemExit) as e:
            return {**info, **self.fail("backward", e)}
        self.phase("harness")
        grads = {n: t.grad for n, t in zip(case["input_names"], ins, strict=True)}
        grads.update({n: p.grad for n, p in pairs.items()})
        for n, gr in grads.items():
            if isinstance(gr, torch.Tensor):
                self.out[f"{i}.grad.{n}"] = gr.detach().contiguous().clone()
        return info


def _load(job: dict[str, Any]) -> type:
    cls, _ = load_class(job["spec"], allow_function=job["kind"] == "function")
    return cls


def run_job(job_dir: Path, notes: list[str]) -> None:
    """Run every case of the job and write result.safetensors in the working directory (the jail's cwd)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from torchdojo.verify.rules import recorder

    me = os.getpid()
    torch.set_num_threads(1)
    job = json.loads((job_dir / "job.json").read_text())
    tensors = load_file(str(job_dir / "job.safetensors"))
    sys.path[:] = job["sys_path"]
    rec = recorder(job.get("submission_dir")) if job["record_ops"] else None
    if rec is not None:
        rec.__enter__()
    header: dict[str, Any] = {"notes": notes, "cases": []}
    harness = _Harness(job, tensors, rec)
    try:
        cls = _load(job)
    except LoadFailure as e:
        header["load_error"] = str(e)
        cls = None
    except MemoryError as e:
        header["load_error"] = describe_exception(e)
        harness.oom = True
        cls = None
    if cls is not None:
        header["class"] = cls.__name__
        for i, case in enumerate(job["cases"]):
            header["cases"].append(harness.case(cls, i, case))
    if rec is not None:
        rec.phase = "harness"
        header["ops"], header["counts"] = rec.ops, rec.counts
    header["oom"] = harness.oom
    if os.getpid() != me:  # a copy forked by the submission returning here: it has nothing to report
        os._exit(0)
    try:
        save_file(harness.out, RESULT + ".tmp", metadata={"result": json.dumps(header)})
    except (OSError, SafetensorError) as e:  # e.g. beyond the file-size limit: say so in a result without tensors
        header = {"notes": notes, "fatal": f"its results could not be written ({e})"}
        save_file({}, RESULT + ".tmp", metadata={"result": json.dumps(header)})
    os.replace(RESULT + ".tmp", RESULT)


def main(argv: list[str]) -> int:
    """`python -m torchdojo.verify.child JOB_DIR LIMITS_JSON`: supervise one jailed run; status.json in JOB_DIR."""
    from torchdojo.verify.jail import supervise, write_status

    job_dir = Path(argv[0])
    status = supervise(job_dir, json.loads(argv[1]), run_job)
    write_status(job_dir, status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
