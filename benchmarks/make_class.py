"""Generate a class of conv2d (A1) submissions for `torchdojo grade`, with the verdict each one must get.

Correct layers written four ways (Tensor.unfold + einsum, a loop over output positions, as_strided windows
+ einsum, a loop over kernel offsets + one matmul; padding by slice assignment, nothing from torch.nn but
Module/Parameter), and broken ones: wrong padding, missing bias, flipped kernel, detached output, built-in
F.conv2d / torch.conv2d, subclassing nn.Conv2d, os._exit at import and in forward, sys.exit, an endless
loop, a 50 GB allocation, raising in __init__, a syntax error, a wrong class name; packed as a .py file, a
folder (with a helper module) or a .zip; plus entries that cannot be graded (two files defining Conv2d, a
zip with no .py, a zip bomb, a zip whose member escapes with '..').

OUT/submissions/ holds the class; OUT/expected.json maps each student to
  {"variant", "ok", "failing": [properties that must fail] (every other must pass), "failure": a phrase the
   process-level failure must contain, or null when the run must finish, "note": a phrase the note must
   contain, or null}.

usage: python benchmarks/make_class.py OUT [--n 100]
"""

import argparse
import io
import json
import sys
import textwrap
import zipfile
from pathlib import Path

PAD = '''
def pad(x, p):
    """Zero padding by slice assignment (F.pad is torch.nn)."""
    if p == 0:
        return x
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h + 2 * p, w + 2 * p)
    out[:, :, p : p + h, p : p + w] = x
    return out
'''

INIT = """
class Conv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kh, kw) * 0.1)
        self.bias = nn.Parameter(torch.zeros(out_channels))
"""

HEAD = "import torch\nfrom torch import nn\n"

UNFOLD_FORWARD = """
    def forward(self, x):
        kh, kw = self.weight.shape[2:]
        win = pad(x, self.padding).unfold(2, kh, self.stride).unfold(3, kw, self.stride)  # (B, C, OH, OW, kh, kw)
        return torch.einsum("bchwij,ocij->bohw", win, self.weight) + self.bias.view(1, -1, 1, 1)
"""

LOOPS_FORWARD = """
    def forward(self, x):
        xp, s = pad(x, self.padding), self.stride
        o, _, kh, kw = self.weight.shape
        oh, ow = (xp.shape[2] - kh) // s + 1, (xp.shape[3] - kw) // s + 1
        w = self.weight.reshape(o, -1)
        cols = []
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, :, i * s : i * s + kh, j * s : j * s + kw].reshape(x.shape[0], -1)
                cols.append(patch @ w.t())
        return torch.stack(cols, dim=2).reshape(x.shape[0], o, oh, ow) + self.bias.view(1, -1, 1, 1)
"""

STRIDED_FORWARD = """
    def forward(self, x):
        xp, s = pad(x, self.padding).contiguous(), self.stride
        b, c, h, w = xp.shape
        kh, kw = self.weight.shape[2:]
        oh, ow = (h - kh) // s + 1, (w - kw) // s + 1
        sb, sc, sh, sw = xp.stride()
        win = xp.as_strided((b, c, oh, ow, kh, kw), (sb, sc, sh * s, sw * s, sh, sw), xp.storage_offset())
        return torch.einsum("bcyxij,ocij->boyx", win, self.weight) + self.bias[None, :, None, None]
"""

MATMUL_FORWARD = """
    def forward(self, x):
        xp, s = pad(x, self.padding), self.stride
        o, c, kh, kw = self.weight.shape
        oh, ow = (xp.shape[2] - kh) // s + 1, (xp.shape[3] - kw) // s + 1
        hs, ws = s * (oh - 1) + 1, s * (ow - 1) + 1
        taps = [xp[:, :, i : i + hs : s, j : j + ws : s] for i in range(kh) for j in range(kw)]
        cols = torch.stack(taps, dim=2).reshape(x.shape[0], c * kh * kw, oh * ow)
        return (self.weight.reshape(o, -1) @ cols).reshape(x.shape[0], o, oh, ow) + self.bias.view(1, -1, 1, 1)
"""


def layer(forward: str, head: str = HEAD, pad: str = PAD, init: str = INIT) -> str:
    return head + pad + init + forward


def edit(source: str, old: str, new: str) -> str:
    assert old in source, old
    return source.replace(old, new)


UNFOLD = layer(UNFOLD_FORWARD)
NUMBERS = ["forward", "grad x", "grad weight", "grad bias"]  # every property but parameters and the rules
EVERYTHING = ["*"]


def _variants() -> dict[str, tuple[dict[str, str], str, dict]]:
    """name -> ({path: text}, packing "py" | "folder" | "zip", expectation)."""
    ok = {"ok": True, "failing": [], "failure": None, "note": None}

    def bad(failing: list[str], failure: str | None = None, note: str | None = None) -> dict:
        return {"ok": False, "failing": failing, "failure": failure, "note": note}

    one_side = edit(UNFOLD, "out = x.new_zeros(b, c, h + 2 * p, w + 2 * p)", "out = x.new_zeros(b, c, h + p, w + p)")
    one_side = edit(one_side, "out[:, :, p : p + h, p : p + w] = x", "out[:, :, p:, p:] = x  # top and left only")
    no_bias = edit(UNFOLD, "        self.bias = nn.Parameter(torch.zeros(out_channels))\n", "")
    no_bias = edit(no_bias, " + self.bias.view(1, -1, 1, 1)", "")
    builtin = (
        HEAD
        + "import torch.nn.functional as F\n"
        + INIT
        + textwrap.dedent("""
        def forward(self, x):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
    """).replace("\n", "\n    ")
    )
    helper = {
        "hw1/conv.py": edit(layer(UNFOLD_FORWARD, pad=""), HEAD, HEAD + "from padding import pad\n"),
        "hw1/padding.py": "import torch\n" + PAD,
        "hw1/README.txt": "my convolution\n",
    }
    return {
        "unfold": ({"conv.py": UNFOLD}, "py", ok),
        "wrong_padding": ({"conv.py": one_side}, "py", bad(NUMBERS)),
        "builtin_F": ({"conv.py": builtin}, "py", bad(["rules"])),
        "exit_in_forward": (
            {
                "conv.py": edit(
                    UNFOLD, "        kh, kw = self.weight.shape[2:]\n", "        import os\n        os._exit(0)\n"
                )
            },
            "py",
            bad(EVERYTHING, failure="ended"),
        ),
        "endless_loop": (
            {
                "conv.py": edit(
                    UNFOLD, "        kh, kw = self.weight.shape[2:]\n", "        while True:\n            pass\n"
                )
            },
            "py",
            bad(EVERYTHING, failure="timed out"),
        ),
        "loops_zip": ({"submission/conv.py": layer(LOOPS_FORWARD)}, "zip", ok),
        "missing_bias": ({"conv.py": no_bias}, "py", bad(["parameters", "forward", "grad bias"])),
        "syntax_error": (
            {"conv.py": edit(UNFOLD, "def forward(self, x):", "def forward(self, x)")},
            "py",
            bad(EVERYTHING, failure="SyntaxError"),
        ),
        "zip_bomb": ({"conv.py": UNFOLD, "padding.bin": "\0" * (40 << 20)}, "zip", bad(EVERYTHING, note="zip bomb")),
        "detached": (
            {
                "conv.py": edit(
                    UNFOLD, "self.bias.view(1, -1, 1, 1)\n", "self.bias.view(1, -1, 1, 1)).detach()\n"
                ).replace("return torch.einsum(", "return (torch.einsum(")
            },
            "py",
            bad(["grad x", "grad weight", "grad bias"]),
        ),
        "huge_allocation": (
            {
                "conv.py": edit(
                    UNFOLD,
                    "        kh, kw = self.weight.shape[2:]\n",
                    "        big = torch.empty(50 * 2**30 // 4)  # 50 GB\n        kh, kw = self.weight.shape[2:]\n",
                )
            },
            "py",
            bad(EVERYTHING, failure="used more than"),
        ),
        "ambiguous": ({"a.py": UNFOLD, "b.py": layer(LOOPS_FORWARD)}, "folder", bad(EVERYTHING, note="ambiguous")),
        "strided": ({"conv2d.py": layer(STRIDED_FORWARD)}, "py", ok),
        "flipped_kernel": (
            {"conv.py": edit(UNFOLD, "win, self.weight)", "win, self.weight.flip(2, 3))")},
            "py",
            bad(["forward", "grad x", "grad weight"]),
        ),
        "exit_at_import": ({"conv.py": "import os\nos._exit(0)\n" + UNFOLD}, "py", bad(EVERYTHING, failure="ended")),
        "sys_exit": ({"conv.py": "import sys\nsys.exit(0)\n" + UNFOLD}, "py", bad(EVERYTHING, failure="SystemExit")),
        "subclass": ({"conv.py": HEAD + "\n\nclass Conv2d(nn.Conv2d):\n    pass\n"}, "py", bad(["rules"])),
        "builtin_torch": ({"conv.py": edit(builtin, "F.conv2d(", "torch.conv2d(")}, "py", bad(["rules"])),
        "wrong_class_name": (
            {"conv.py": edit(UNFOLD, "class Conv2d(", "class MyConv2d(")},
            "py",
            bad(EVERYTHING, failure="has no 'Conv2d'"),
        ),
        "matmul": ({"conv.py": layer(MATMUL_FORWARD)}, "py", ok),
        "helper_folder": (helper, "folder", ok),
        "flipped_zip": (
            {"conv.py": edit(layer(STRIDED_FORWARD), "win, self.weight)", "win, self.weight.flip(2, 3))")},
            "zip",
            bad(["forward", "grad x", "grad weight"]),
        ),
        "no_entry": ({"notes.txt": "I ran out of time\n"}, "zip", bad(EVERYTHING, note="no file matching")),
        "zip_escape": ({"../evil.py": UNFOLD}, "zip", bad(EVERYTHING, note="outside")),
        "raise_in_init": (
            {
                "conv.py": edit(
                    UNFOLD,
                    "        super().__init__()\n",
                    "        super().__init__()\n        raise ValueError('todo')\n",
                )
            },
            "py",
            bad([*NUMBERS, "parameters", "rules (ops)"]),  # rules (ops): no forward ran to record
        ),
        "unfold_zip": ({"conv.py": UNFOLD}, "zip", ok),
    }


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def write_student(folder: Path, student: str, files: dict[str, str], packing: str) -> None:
    """One student's entry in `folder`: STUDENT.py, STUDENT/ or STUDENT.zip."""
    if packing == "py":
        ((_, text),) = files.items()
        (folder / f"{student}.py").write_text(text)
    elif packing == "folder":
        for name, text in files.items():
            (folder / student / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / student / name).write_text(text)
    else:
        (folder / f"{student}.zip").write_bytes(_zip(files))


def expand(failing: list[str], properties: list[str]) -> list[str]:
    """'*' -> every property; 'rules' -> every rules property; others as they are."""
    if failing == ["*"]:
        return list(properties)
    out = []
    for name in failing:
        out += [p for p in properties if p.startswith("rules")] if name == "rules" else [name]
    return out


def make_class(out: Path, n: int, properties: list[str]) -> dict[str, dict]:
    """Write n students (the variants in order, cycling) into out/submissions and out/expected.json."""
    variants = list(_variants().items())
    subs = out / "submissions"
    subs.mkdir(parents=True, exist_ok=False)
    expected = {}
    for i in range(n):
        name, (files, packing, exp) = variants[i % len(variants)]
        student = f"s{i:03d}_{name}"
        write_student(subs, student, files, packing)
        expected[student] = {"variant": name, **exp, "failing": expand(exp["failing"], properties)}
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


def mismatches(expected: dict[str, dict], results: list[dict]) -> list[str]:
    """Every way the grading differs from expected.json (empty: every verdict right)."""
    problems = []
    got = {r["student"]: r for r in results}
    for student in sorted(set(expected) - set(got)):
        problems.append(f"{student}: not graded")
    for student, exp in expected.items():
        r = got.get(student)
        if r is None:
            continue
        failing = sorted(p for p, pts in r["points"].items() if pts == 0)
        failure = (r["verdict"] or {}).get("failure")
        ok = r["earned"] == r["total"]
        why = []
        if ok != exp["ok"]:
            why.append(f"ok {ok}, expected {exp['ok']}")
        if failing != sorted(exp["failing"]):
            why.append(f"failing {failing}, expected {sorted(exp['failing'])}")
        if exp["failure"] is None and failure is not None:
            why.append(f"the run did not finish: {failure}")
        if exp["failure"] is not None and exp["failure"] not in (failure or ""):
            why.append(f"failure {failure!r}, expected one saying {exp['failure']!r}")
        if exp["note"] is not None and exp["note"] not in r["note"]:
            why.append(f"note {r['note']!r}, expected one saying {exp['note']!r}")
        if why:
            problems.append(f"{student}: " + "; ".join(why))
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to create (submissions/ and expected.json go in it)")
    p.add_argument("--n", type=int, default=100, help="students (default 100)")
    args = p.parse_args()
    from torchdojo.verify.grade import target_properties

    expected = make_class(args.out, args.n, target_properties("conv2d", False)[0])
    kinds = sum(1 for e in expected.values() if e["ok"])
    print(f"{len(expected)} submissions ({kinds} correct) in {args.out / 'submissions'}; {args.out / 'expected.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
