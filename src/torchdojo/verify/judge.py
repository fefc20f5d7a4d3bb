"""Turn what came back from the jailed run (status.json, result.safetensors) into per-property tallies.

Only tensors and a JSON header come back; anything missing, malformed or late is a failure with a reason,
never a pass. The reference results were computed in this (the parent) process by `cases.prepare`.
"""

import json
import os
import stat
from pathlib import Path
from typing import Any

import torch

from torchdojo.verify.cases import Prepared
from torchdojo.verify.core import TOLERANCE, Outcome, Tally, Target, compare


class Malformed(Exception):
    """The result file is missing, not a regular file, too large or not a valid safetensors file."""


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path`, refusing symlinks, non-regular files and files over `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Malformed("missing") from None
    except OSError as e:
        raise Malformed(f"cannot be opened ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Malformed("not a regular file")
        if info.st_size > max_bytes:
            raise Malformed(f"{info.st_size} bytes, over the {max_bytes} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(max_bytes + 1)
    finally:
        os.close(fd)


def read_result(path: Path, max_bytes: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of result.safetensors; Malformed with the reason otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_regular(path, max_bytes)
    try:
        tensors = load(data)
        header_json = _header(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise Malformed(f"not a valid safetensors file ({e})") from None
    try:
        header = json.loads(header_json)
        assert isinstance(header, dict) and isinstance(header.get("cases", []), list)
    except (json.JSONDecodeError, AssertionError, TypeError):
        raise Malformed("its header is not the JSON the harness writes") from None
    return header, tensors


def _header(data: bytes) -> str:
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    if "result" not in meta:
        raise ValueError("no result header")
    return meta["result"]


def tally_cases(
    target: Target, prepared: list[Prepared], header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, Tally]:
    """One Tally per numeric property over every case the child answered."""
    tallies = {p: Tally(p) for p in target.properties()}
    answers = header.get("cases", [])
    i = 0  # index among the valid cases, the only ones sent to the child
    for prep in prepared:
        if prep.invalid:
            outcomes = {p: Outcome(False, None, prep.invalid) for p in tallies}
        else:
            answer = answers[i] if i < len(answers) else None
            outcomes = _judge_case(target, prep, answer, tensors, i)
            i += 1
        for p, o in outcomes.items():
            tallies[p].add(o, prep.case)
    return tallies


def _judge_case(
    target: Target, prep: Prepared, answer: Any, tensors: dict[str, torch.Tensor], i: int
) -> dict[str, Outcome]:
    props = target.properties()
    out: dict[str, Outcome] = {}

    def fail_rest(msg: str) -> dict[str, Outcome]:
        for p in props:
            out.setdefault(p, Outcome(False, None, msg))
        return out

    if not isinstance(answer, dict):
        return fail_rest("no answer for this case came back")
    err = answer.get("error") if isinstance(answer.get("error"), dict) else None
    if err and err.get("phase") == "constructor":
        return fail_rest(f"constructor raised {err.get('msg')}")
    if "parameters" in props:
        problems = answer.get("params") or []
        out["parameters"] = Outcome(not problems, None, "; ".join(map(str, problems)) or None)
    if err and err.get("phase") == "forward":
        return fail_rest(f"forward raised {err.get('msg')}")
    tol = TOLERANCE[prep.case["dtype"]]
    if answer.get("out"):
        return fail_rest(str(answer["out"]))
    if isinstance(answer.get("out_shape"), list):
        shape = tuple(int(d) for d in answer["out_shape"])
        out["forward"] = Outcome(False, None, f"output has shape {shape}, torch gives {tuple(prep.ref_out.shape)}")
    else:
        out["forward"] = compare(tensors.get(f"{i}.out"), prep.ref_out, tol, "output")
    if answer.get("skip"):
        return fail_rest(str(answer["skip"]))
    if err:
        return fail_rest(f"backward raised {err.get('msg')}")
    for name, ref in prep.ref_grads.items():
        prop = f"grad {name}"
        if prop in props:
            out[prop] = compare(tensors.get(f"{i}.grad.{name}"), ref, tol, f"dL/d{name}")
    return fail_rest("not checked")
