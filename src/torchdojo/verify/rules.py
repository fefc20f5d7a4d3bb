"""The rules of an assignment, checked twice: in the source (parent, `ast`) and in the ops that ran (child).

A1 says "without anything from torch.nn": no built-in convolution. The source check resolves import
aliases (`import torch.nn.functional as F`, `from torch import nn`, `from torch.nn import Conv2d`) and flags
every name that reaches a forbidden part of torch (torch.nn.functional, torch.nn.grad, torch._C._nn, any
torch name spelled like a convolution: nn.Conv2d, torch.conv2d, torch.ops.aten.convolution, ...), strings
naming one (`getattr(torch, "conv2d")`), and dynamic code that hides what runs (eval, exec, __import__,
importlib). The op check is a TorchDispatchMode the child installs before importing the submission: it
records every ATen op dispatched during import, construction, forward and backward; a convolution op fails.
Both are evidence, not proof: code that tampers with the child's interpreter can hide ops from the recorder
(see docs/SECURITY.md), which is why the source check runs in the parent on the file itself.
"""

import ast
import dataclasses
import re
import traceback
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """What one assignment forbids: a sentence for messages, name patterns for the source, ATen op patterns."""

    what: str
    forbidden_names: re.Pattern[str]  # matched against fully resolved dotted names ("torch.nn.Conv2d")
    forbidden_ops: re.Pattern[str] | None  # matched against ATen op names ("convolution"); None: no op rule


_CONV_NAMES = re.compile(
    r"^torch\.(nn\.functional|nn\.grad|_C\._nn|nn\.modules\.conv|nn\.modules\.fold)(\.|$)"
    r"|^torch\.(?:[\w.]*\.)?((Lazy)?Conv\w*|Unfold|Fold|_?conv\w*|_?convolution\w*|\w*_conv\w*|\w*_convolution\w*)$"
)
_CONV_OPS = re.compile(r"(^|_)conv(olution)?($|_|\d)|^(cudnn|mkldnn|miopen)_conv|im2col|col2im|convolution")
_RNN_NAMES = re.compile(
    r"^torch\.(nn\.functional|_C\._nn|_VF|nn\.modules\.rnn)(\.|$)|^torch\.(?:[\w.]*\.)?(RNN\w*|GRU\w*|LSTM\w*|"
    r"rnn_\w+|gru\w*|lstm\w*|_VF\w*)$"
)

RULES: dict[str, RuleSet] = {
    "no-builtin-conv": RuleSet("no built-in convolution (A1: nothing from torch.nn)", _CONV_NAMES, _CONV_OPS),
    # torch's RNN cells decompose into matmuls and tanh before a dispatch mode sees them: source rule only
    "no-builtin-rnn": RuleSet("no built-in recurrent cell (nothing from torch.nn's RNNs)", _RNN_NAMES, None),
}
_DYNAMIC = {"eval", "exec", "compile", "__import__", "importlib", "globals", "vars"}


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, rules: RuleSet):
        self.rules = rules
        self.alias: dict[str, str] = {}
        self.hits: list[tuple[int, str]] = []

    def flag(self, node: ast.AST, text: str) -> None:
        self.hits.append((getattr(node, "lineno", 0), text))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.alias[a.asname] = a.name
            else:
                self.alias[a.name.split(".")[0]] = a.name.split(".")[0]
            self._check_module(node, a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        self._check_module(node, mod)
        for a in node.names:
            full = f"{mod}.{a.name}" if mod else a.name
            self.alias[a.asname or a.name] = full
            if self.rules.forbidden_names.search(full):
                self.flag(node, f"imports {full}")

    def _check_module(self, node: ast.AST, mod: str) -> None:
        if mod.split(".")[0] == "importlib":
            self.flag(node, "imports importlib (dynamic imports hide what runs)")
        elif self.rules.forbidden_names.search(mod):
            self.flag(node, f"imports {mod}")

    def resolve(self, node: ast.AST) -> str | None:
        parts = _dotted(node)
        if parts is None or parts[0] not in self.alias:
            return None
        return ".".join([self.alias[parts[0]], *parts[1:]])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        full = self.resolve(node)
        if full is not None and self.rules.forbidden_names.search(full):
            self.flag(node, f"uses {full}")
            return  # one message per expression, not one per prefix
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _DYNAMIC:
            self.flag(node, f"uses {node.id} (dynamic code hides what runs)")
        elif node.id in self.alias and self.rules.forbidden_names.search(self.alias[node.id]):
            self.flag(node, f"uses {self.alias[node.id]}")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and re.fullmatch(r"[\w.]+", node.value):
            last = node.value.split(".")[-1]
            ops = self.rules.forbidden_ops
            if self.rules.forbidden_names.search(f"torch.{node.value}") or (ops is not None and ops.search(last)):
                self.flag(node, f"names {node.value!r} in a string (getattr tricks count as using it)")


def source_violations(source: str, rule: str, filename: str = "<submission>") -> list[str]:
    """'file.py, line 3: imports torch.nn.functional', one per offending expression, in line order."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as e:
        return [f"{Path(filename).name}, line {e.lineno}: not valid Python ({e.msg})"]
    scanner = _Scanner(RULES[rule])
    scanner.visit(tree)
    return [f"{Path(filename).name}, line {line}: {text}" for line, text in sorted(set(scanner.hits))]


def forbidden_ops(ops: dict[str, dict[str, Any]], rule: str) -> list[str]:
    """The recorded ops the rule forbids: 'aten.convolution in forward (sub.py, line 12)'."""
    pattern = RULES[rule].forbidden_ops
    assert pattern is not None, f"rule {rule} has no op part"
    out = []
    for name, seen in sorted(ops.items()):
        if pattern.search(name.split(".")[-1]):
            where = f" ({seen['where']})" if seen.get("where") else ""
            out.append(f"aten.{name} in {seen.get('phase', '?')}{where}")
    return out


def rule_properties(rule: str | None) -> list[str]:
    """The rule properties a verdict carries: none, 'rules (source)', or that and 'rules (ops)'."""
    if rule is None:
        return []
    return ["rules (source)"] + (["rules (ops)"] if RULES[rule].forbidden_ops is not None else [])


def recorder(submission_dir: str | None) -> Any:
    """A TorchDispatchMode recording each ATen op once: {name: {"phase", "where", "count"}} in `.ops`.

    `.phase` is set by the harness ("import", "constructor", "forward", "backward"); `where` is the innermost
    frame inside `submission_dir` when the op was first seen (the student's line that caused it).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: dict[str, dict[str, Any]] = {}
            self.phase = "import"
            self.counts: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            name = func._schema.name.split("::")[-1]
            self.counts[self.phase] = self.counts.get(self.phase, 0) + 1
            if name not in self.ops:
                self.ops[name] = {"phase": self.phase, "where": _submission_frame(submission_dir)}
            return func(*args, **(kwargs or {}))

    return Recorder()


def _submission_frame(submission_dir: str | None) -> str | None:
    if submission_dir is None:
        return None
    for f in reversed(traceback.extract_stack()):
        if f.filename.startswith(submission_dir):
            return f"{Path(f.filename).name}, line {f.lineno}"
    return None
