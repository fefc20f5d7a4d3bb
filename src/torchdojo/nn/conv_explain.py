"""A2/A3 worked by hand: symbolic backprop through a small convolution, and a transposed convolution
built stamp by stamp; each ends with a numeric check against PyTorch.

Both return an `Explanation` (the text to print, plus the numbers checked) so the CLI (`torchdojo
explain`) and the conv-scratch report show the same thing. Indices in the text start at 1, as in the
course; the maths is cross-correlation (what PyTorch and the course call convolution).
"""

import dataclasses

import torch

from torchdojo.nn.conv import conv2d
from torchdojo.nn.conv_transpose import conv_transpose2d, stamps


@dataclasses.dataclass
class Explanation:
    text: str
    checks: dict[str, float]  # name -> max |diff| against PyTorch
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(v <= self.tolerance for v in self.checks.values())


def _name(sym: str, i: int, j: int, wide: bool) -> str:
    """'X12' (1-based), or 'X[10,2]' when some index has two digits."""
    return f"{sym}[{i + 1},{j + 1}]" if wide else f"{sym}{i + 1}{j + 1}"


def backprop_terms(h: int, w: int, kh: int, kw: int, stride: int = 1) -> tuple[dict, dict, dict]:
    """For Y = X ⋆ K (no padding): which (Y, X, K) index triples appear in each Y, dC/dK and dC/dX."""
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    y_terms: dict[tuple[int, int], list] = {(i, j): [] for i in range(oh) for j in range(ow)}
    dk: dict[tuple[int, int], list] = {(a, b): [] for a in range(kh) for b in range(kw)}
    dx: dict[tuple[int, int], list] = {(m, n): [] for m in range(h) for n in range(w)}
    for i, j in y_terms:
        for a in range(kh):
            for b in range(kw):
                m, n = i * stride + a, j * stride + b  # the pixel K_ab meets when computing Y_ij
                y_terms[(i, j)].append(((m, n), (a, b)))
                dk[(a, b)].append(((i, j), (m, n)))  # dC/dK_ab += dC/dY_ij * X_mn
                dx[(m, n)].append(((i, j), (a, b)))  # dC/dX_mn += dC/dY_ij * K_ab
    return y_terms, dk, dx


def explain_conv_backprop(
    h: int = 3, w: int = 3, kh: int = 2, kw: int = 2, stride: int = 1, seed: int = 0
) -> Explanation:
    """Every dC/dK_ab and dC/dX_ij as a sum of dC/dY_ij terms, then the formulas checked numerically."""
    if kh > h or kw > w or min(h, w, kh, kw, stride) < 1:
        raise ValueError(
            f"need 1 <= kernel <= input and stride >= 1, got input {h}x{w}, kernel {kh}x{kw}, stride {stride}"
        )
    y_terms, dk, dx = backprop_terms(h, w, kh, kw, stride)
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    wide = max(h, w) > 9

    def X(i: int, j: int) -> str:  # noqa: N802 (the maths' names)
        return _name("X", i, j, wide)

    def K(i: int, j: int) -> str:  # noqa: N802
        return _name("K", i, j, wide)

    def Y(i: int, j: int) -> str:  # noqa: N802
        return _name("Y", i, j, wide)

    def G(i: int, j: int) -> str:  # noqa: N802
        return "dC/d" + _name("Y", i, j, wide)

    lines = [
        f"Backprop through a convolution by hand (A2): X is {h}x{w}, K is {kh}x{kw}, stride {stride}, "
        f"no padding, so Y = X ⋆ K is {oh}x{ow}.",
        "⋆ is cross-correlation (PyTorch's convolution); indices start at 1; dC/dY is known from the layer above.",
        "",
        "Forward:",
    ]
    lines += [f"  {Y(*ij)} = " + " + ".join(f"{X(*mn)}·{K(*ab)}" for mn, ab in t) for ij, t in y_terms.items()]
    lines += [
        "",
        "dC/dK: every kernel weight is used at every output position, so",
        "  dC/dK_ab = Σ_ij dC/dY_ij · "
        + ("X_(i+a-1)(j+b-1)" if stride == 1 else f"X_((i-1)·{stride}+a)((j-1)·{stride}+b)"),
    ]
    lines += [f"  dC/d{K(*ab)} = " + " + ".join(f"{G(*ij)}·{X(*mn)}" for ij, mn in t) for ab, t in dk.items()]
    lines += [
        "",
        "dC/dX: a pixel gets gradient from each output whose window covers it, through the kernel weight that met it:",
    ]
    lines += [
        f"  dC/d{X(*mn)} = " + (" + ".join(f"{G(*ij)}·{K(*ab)}" for ij, ab in t) or "0 (no window covers it)")
        for mn, t in dx.items()
    ]
    lines += [
        "",
        "In matrix form: dC/dK = X ⋆ dC/dY (the input correlated with the output gradient"
        + (f", dC/dY spread out with {stride - 1} zero(s) between entries" if stride > 1 else "")
        + ");",
        f"dC/dX = pad(dC/dY{' dilated by the stride' if stride > 1 else ''}, {kh - 1},{kw - 1}) ⋆ rot180(K): "
        "a full correlation with the flipped kernel.",
    ]

    # numeric check: evaluate the formulas on random numbers and compare with autograd and our manual backward
    g = torch.Generator().manual_seed(seed)
    xv, kv = (
        torch.randn(h, w, generator=g, dtype=torch.float64),
        torch.randn(kh, kw, generator=g, dtype=torch.float64),
    )
    gv = torch.randn(oh, ow, generator=g, dtype=torch.float64)

    def evaluate(terms: dict, a: torch.Tensor, b: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Sum a[p] * b[q] over each entry's (p, q) terms, in plain Python floats."""
        return torch.tensor(
            [[sum(a[p].item() * b[q].item() for p, q in terms[(r, c)]) for c in range(cols)] for r in range(rows)],
            dtype=torch.float64,
        )

    dk_formula, dx_formula = evaluate(dk, gv, xv, kh, kw), evaluate(dx, gv, kv, h, w)
    x_t, k_t = xv.view(1, 1, h, w).requires_grad_(), kv.view(1, 1, kh, kw).requires_grad_()
    import torch.nn.functional as F  # the reference only; our layer never uses it

    F.conv2d(x_t, k_t, stride=stride).backward(gv.view(1, 1, oh, ow))
    x_o, k_o = xv.view(1, 1, h, w).clone().requires_grad_(), kv.view(1, 1, kh, kw).clone().requires_grad_()
    conv2d(x_o, k_o, stride=stride).backward(gv.view(1, 1, oh, ow))
    checks = {
        "dC/dK formulas vs autograd (torch.nn.functional.conv2d)": (dk_formula - k_t.grad[0, 0]).abs().max().item(),
        "dC/dX formulas vs autograd (torch.nn.functional.conv2d)": (dx_formula - x_t.grad[0, 0]).abs().max().item(),
        "dC/dK formulas vs torchdojo's manual backward": (dk_formula - k_o.grad[0, 0]).abs().max().item(),
        "dC/dX formulas vs torchdojo's manual backward": (dx_formula - x_o.grad[0, 0]).abs().max().item(),
    }
    exp = Explanation("", checks, 1e-12)
    lines += ["", f"Numeric check on random X, K and dC/dY (float64, seed {seed}):"]
    lines += [f"  {name}: max |diff| {v:.2g}" for name, v in checks.items()]
    lines.append("OK: the formulas match PyTorch." if exp.ok else "MISMATCH: see the differences above.")
    exp.text = "\n".join(lines)
    return exp


def parse_matrix(text: str) -> torch.Tensor:
    """'1 2; 3 4' (rows split by ';', entries by spaces or commas) -> a float64 (rows, cols) tensor."""
    rows = [r.replace(",", " ").split() for r in text.strip().strip(";").split(";")]
    if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"{text!r} is not a matrix: write rows separated by ';', e.g. '1 2; 3 4'")
    try:
        return torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float64)
    except ValueError:
        raise ValueError(f"{text!r} has an entry that is not a number") from None


def format_grid(m: torch.Tensor, indent: str = "  ") -> str:
    """A right-aligned matrix, numbers in %g."""
    cells = [[f"{v:g}" for v in row.tolist()] for row in m]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(indent + " ".join(c.rjust(width) for c in row) for row in cells)


def explain_transposed_conv(x: torch.Tensor, k: torch.Tensor, stride: int = 1, padding: int = 0) -> Explanation:
    """Each input element's contribution grid, their sum, the padding crop, and a check against PyTorch."""
    if stride < 1 or padding < 0:
        raise ValueError(f"need stride >= 1 and padding >= 0, got stride {stride}, padding {padding}")
    h, w = x.shape
    kh, kw = k.shape
    fh, fw = (h - 1) * stride + kh, (w - 1) * stride + kw
    if fh - 2 * padding < 1 or fw - 2 * padding < 1:
        raise ValueError(f"padding {padding} crops the whole {fh}x{fw} result")
    s = stamps(x.view(1, 1, h, w), k.view(1, 1, kh, kw))[0, 0]  # (H, W, kh, kw): x_ij * K
    lines = [
        f"Transposed convolution by hand (A3): input {h}x{w}, kernel {kh}x{kw}, stride {stride}, "
        f"padding {padding} -> output {fh - 2 * padding}x{fw - 2 * padding}.",
        "Each input element x_ij stamps a copy of the kernel, scaled by x_ij, with its top-left corner at "
        + ("row i, column j" if stride == 1 else f"row (i-1)·{stride}+1, column (j-1)·{stride}+1")
        + f" of a {fh}x{fw} grid; overlapping stamps add up.",
        "",
        "Input x:",
        format_grid(x),
        "Kernel K:",
        format_grid(k),
        "",
    ]
    total = torch.zeros(fh, fw, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            grid = torch.zeros(fh, fw, dtype=torch.float64)
            grid[i * stride : i * stride + kh, j * stride : j * stride + kw] = s[i, j]
            total += grid
            lines += [
                f"x{i + 1}{j + 1} = {x[i, j].item():g}: {x[i, j].item():g}·K placed at row {i * stride + 1}, "
                f"column {j * stride + 1}",
                format_grid(grid),
                "",
            ]
    lines += ["Sum of the contributions:", format_grid(total)]
    result = total[padding : fh - padding, padding : fw - padding]
    if padding:
        lines += [
            "",
            f"padding={padding} removes {padding} row(s)/column(s) from each border:",
            format_grid(result),
        ]
    import torch.nn.functional as F  # the reference only

    ref = F.conv_transpose2d(x.view(1, 1, h, w), k.view(1, 1, kh, kw), stride=stride, padding=padding)[0, 0]
    ours = conv_transpose2d(x.view(1, 1, h, w), k.view(1, 1, kh, kw), stride=stride, padding=padding)[0, 0]
    checks = {
        "by hand vs torch.nn.functional.conv_transpose2d": (result - ref).abs().max().item(),
        "torchdojo.nn.conv_transpose2d vs torch.nn.functional.conv_transpose2d": (ours - ref).abs().max().item(),
    }
    exp = Explanation("", checks, 1e-9)
    lines += ["", "PyTorch (torch.nn.functional.conv_transpose2d) gives:", format_grid(ref)]
    lines += [f"  {name}: max |diff| {v:.2g}" for name, v in checks.items()]
    lines.append("OK: the hand computation matches PyTorch." if exp.ok else "MISMATCH: see the differences above.")
    exp.text = "\n".join(lines)
    return exp
