"""A small, safe filter language for tables of runs: ``--where "router_type in ['Dense', 'S-Base']"``.

The text is parsed with :func:`ast.parse` and only these nodes are accepted; nothing is evaluated by Python:

- comparisons ``== != < <= > >=`` (chains such as ``1e8 <= N < 1e9`` included), ``in`` / ``not in`` a list or
  tuple of literals;
- ``and``, ``or``, ``not`` and parentheses;
- literals: numbers (with a leading ``-``), strings, ``True``, ``False``;
- column names: a bare identifier, or any name in backticks (```Model Size` > 1e9``).

A name is looked up among the table's columns first and then in ``aliases`` (the schema names of a column map,
so ``n_experts <= 64`` works when ``n_experts`` maps to ``num_experts``). A comparison with a missing value is
false. Every problem is one :class:`moelab.errors.MoelabError` line naming the expression.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from moelab.errors import MoelabError

__all__ = ["ALLOWED", "filter_rows", "where_mask"]

ALLOWED = (
    "comparisons (== != < <= > >=), 'in'/'not in' a [list] of literals, and/or/not, parentheses, "
    "numbers, strings, True/False, column names (`backticks` for names with spaces)"
)
_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_BACKTICK = re.compile(r"`([^`]*)`")


class _Where:
    def __init__(self, text: str, df: pd.DataFrame, aliases: Mapping[str, str]):
        self.text, self.df, self.aliases = text, df, dict(aliases)
        self.quoted: dict[str, str] = {}

    def fail(self, why: str) -> MoelabError:
        return MoelabError(f"--where {self.text!r}: {why}")

    def parse(self) -> ast.expr:
        def sub(m: re.Match) -> str:
            key = f"__col{len(self.quoted)}__"
            self.quoted[key] = m.group(1)
            return key

        src = _BACKTICK.sub(sub, self.text.strip())
        if not src:
            raise self.fail("empty expression")
        try:
            return ast.parse(src, mode="eval").body
        except SyntaxError as exc:
            raise self.fail(f"not an expression ({exc.msg}); allowed: {ALLOWED}") from None

    def column(self, name: str) -> pd.Series:
        name = self.quoted.get(name, name)
        if name in self.df.columns:
            return self.df[name]
        if name in self.aliases and self.aliases[name] in self.df.columns:
            return self.df[self.aliases[name]]
        cols = ", ".join(map(str, self.df.columns))
        raise self.fail(f"unknown column {name!r}; columns are {cols}")

    def literal(self, node: ast.expr):
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub | ast.UAdd)
            and isinstance(node.operand, ast.Constant)
            and isinstance(node.operand.value, int | float)
            and not isinstance(node.operand.value, bool)
        ):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        return None

    def value(self, node: ast.expr):
        """A column (Series) or a literal (scalar)."""
        if isinstance(node, ast.Name):
            return self.column(node.id)
        lit = self.literal(node)
        if lit is not None:
            return lit
        raise self.unsupported(node)

    def unsupported(self, node: ast.AST) -> MoelabError:
        what = ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__
        for key, name in self.quoted.items():
            what = what.replace(key, f"`{name}`")
        return self.fail(f"{what!r} is not allowed; allowed: {ALLOWED}")

    def mask(self, node: ast.expr) -> pd.Series:
        if isinstance(node, ast.BoolOp):
            parts = [self.mask(v) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.mask(node.operand)
        if isinstance(node, ast.Compare):
            out = pd.Series(True, index=self.df.index)
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                out = out & self.compare(left, op, right)
                left = right
            return out
        if isinstance(node, ast.Name):  # a boolean column on its own
            col = self.column(node.id)
            if not pd.api.types.is_bool_dtype(col):
                raise self.fail(f"column {node.id!r} is not true/false; compare it with a value")
            return col.fillna(False).astype(bool)
        raise self.unsupported(node)

    def compare(self, left: ast.expr, op: ast.cmpop, right: ast.expr) -> pd.Series:
        a = self.value(left)
        if isinstance(op, ast.In | ast.NotIn):
            if not isinstance(right, ast.List | ast.Tuple | ast.Set):
                raise self.fail(f"'in' needs a [list] of literals, got {ast.unparse(right)!r}")
            items = [self.literal(e) for e in right.elts]
            if any(i is None for i in items):
                raise self.fail(f"'in' needs a [list] of literals, got {ast.unparse(right)!r}")
            if not isinstance(a, pd.Series):
                raise self.fail("the left side of 'in' must be a column")
            m = a.isin(items)
            return ~m & a.notna() if isinstance(op, ast.NotIn) else m
        if type(op) not in _CMP:
            raise self.unsupported(op)
        b = self.value(right)
        if not isinstance(a, pd.Series) and not isinstance(b, pd.Series):
            raise self.fail(f"{ast.unparse(left)} {ast.unparse(right)}: a comparison needs a column")
        try:
            res = _CMP[type(op)](a, b)
        except TypeError as exc:
            raise self.fail(f"cannot compare ({str(exc).splitlines()[0]})") from None
        res = pd.Series(np.asarray(res, dtype=bool), index=self.df.index)
        for side in (a, b):  # a missing value never satisfies a comparison (!= included)
            if isinstance(side, pd.Series):
                res &= side.notna().to_numpy()
        return res


def where_mask(df: pd.DataFrame, text: str, aliases: Mapping[str, str] | None = None) -> np.ndarray:
    """Boolean mask of the rows of ``df`` that satisfy the filter ``text`` (see the module docstring)."""
    w = _Where(str(text), df, aliases or {})
    return w.mask(w.parse()).to_numpy(dtype=bool)


def filter_rows(
    df: pd.DataFrame, text: str | None, aliases: Mapping[str, str] | None = None, source: str = "table"
) -> pd.DataFrame:
    """The rows of ``df`` that satisfy ``text`` (all rows when ``text`` is None); none left is an error."""
    if text is None:
        return df
    keep = where_mask(df, text, aliases)
    if not keep.any():
        raise MoelabError(f"--where {text!r} keeps none of the {len(df)} rows of {source}")
    return df[keep]
