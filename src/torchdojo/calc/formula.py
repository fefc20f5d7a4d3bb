"""Closed-form formulas: one symbolic string, shown with its numbers substituted and evaluated safely.

`Formula("K*K*M*N + N", K=5, M=3, N=64)` renders as "K*K*M*N + N = 5*5*3*64 + 64 = 4,864"; the value
comes from walking the expression's AST (numbers, names, + - * / // ** and ceil/floor/max only).
"""

import ast
import dataclasses
import math
import operator
import re
from typing import Any

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_FUNCS = {"ceil": math.ceil, "floor": math.floor, "max": max, "min": min}


def evaluate(expr: str, values: dict[str, float]) -> float:
    """The value of arithmetic `expr` with `values` for its names; anything else raises ValueError."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise ValueError(f"formula {expr!r}: no value for {node.id!r}")
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*(walk(a) for a in node.args))
        raise ValueError(f"formula {expr!r}: unsupported element {ast.dump(node)[:40]}")

    return walk(ast.parse(expr, mode="eval"))


def _num(v: float) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.4g}"
    return f"{int(v):,}"


@dataclasses.dataclass
class Formula:
    """A symbolic expression and the numbers it is evaluated with."""

    expr: str
    values: dict[str, float]

    def __init__(self, expr: str, **values: float):
        self.expr = expr
        self.values = values

    @property
    def value(self) -> float:
        v = evaluate(self.expr, self.values)
        return int(v) if float(v).is_integer() else v

    def substituted(self) -> str:
        return re.sub(
            r"[A-Za-z_][A-Za-z_0-9]*",
            lambda m: m.group(0) if m.group(0) in _FUNCS else str(self.values[m.group(0)]),
            self.expr,
        )

    def text(self) -> str:
        """'expr = numbers = value' (the middle part left out when it adds nothing)."""
        sub = self.substituted()
        if self.expr == str(self.value):
            return self.expr
        parts = [self.expr] + ([sub] if sub != self.expr and sub != str(self.value) else [])
        return " = ".join([*parts, _num(self.value)])
