"""``--where``: the safe filter language (analysis.where) against pandas' own evaluator on random tables and
random expressions; what it refuses, in one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.where import filter_rows, where_mask
from moelab.errors import MoelabError


def _table(rng, n=60):
    return pd.DataFrame(
        {
            "k": rng.integers(1, 5, n),
            "freq": rng.choice([0.25, 0.5, 1.0], n),
            "router": rng.choice(["Dense", "S-Base", "RL-R", "Hash"], n),
            "N": np.exp(rng.uniform(np.log(1e6), np.log(1e10), n)),
        }
    )


def _atom(rng):
    kind = rng.integers(0, 5)
    if kind == 0:
        return f"k {rng.choice(['==', '!=', '<', '<=', '>', '>='])} {rng.integers(0, 6)}"
    if kind == 1:
        names = rng.choice(["Dense", "S-Base", "RL-R", "Hash"], 2, replace=False)
        items = ", ".join(repr(str(x)) for x in names)
        return f"router {rng.choice(['in', 'not in'])} [{items}]"
    if kind == 2:
        return f"{rng.uniform(1e6, 1e8):.4g} <= N < {rng.uniform(1e8, 1e10):.4g}"
    if kind == 3:
        return f"freq == {float(rng.choice([0.25, 0.5, 1.0, -1.0]))}"
    return f"k >= -{rng.integers(0, 3)}"


def _expr(rng, depth=0):
    if depth > 2 or rng.random() < 0.4:
        return _atom(rng)
    op = rng.choice(["and", "or"])
    left, right = _expr(rng, depth + 1), _expr(rng, depth + 1)
    out = f"({left}) {op} ({right})"
    return f"not ({out})" if rng.random() < 0.3 else out


def test_random_expressions_match_pandas_eval():
    """The reference is pandas' evaluator (used here on the test's own strings only, never on user text)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        df = _table(rng)
        text = _expr(rng)
        ref = df.eval(text, engine="python").to_numpy(dtype=bool)
        assert np.array_equal(where_mask(df, text), ref), text


def test_backticks_aliases_and_missing_values():
    df = pd.DataFrame({"Model Size": [1e8, 2e9, np.nan], "num_experts": [1, 8, 64], "t": ["a", None, "b"]})
    assert where_mask(df, "`Model Size` > 1e9").tolist() == [False, True, False]
    alias = {"n_experts": "num_experts"}
    assert where_mask(df, "n_experts >= 8", aliases=alias).tolist() == [False, True, True]
    # a missing value satisfies no comparison, '!=' and 'not in' included
    assert where_mask(df, "`Model Size` != 1e8").tolist() == [False, True, False]
    assert where_mask(df, "t not in ['a']").tolist() == [False, False, True]
    assert where_mask(df, "not (t in ['a'])").tolist() == [False, True, True]
    assert len(filter_rows(df, None)) == 3


@pytest.mark.parametrize(
    "text, msg",
    [
        ("__import__('os').system('true')", "is not allowed"),
        ("k.real > 1", "is not allowed"),
        ("k + 1 > 2", "is not allowed"),
        ("k == k2", "unknown column 'k2'"),
        ("router in other", "needs a [list] of literals"),
        ("router in ['a', k]", "needs a [list] of literals"),
        ("(lambda: 1)() == 1", "is not allowed"),
        ("k > ", "not an expression"),
        ("", "empty expression"),
        ("1 < 2", "needs a column"),
        ("router < 3", "cannot compare"),
        ("k", "not true/false"),
        ("k == 99", "keeps none of the 60 rows"),
    ],
)
def test_refusals_are_one_line(text, msg):
    df = _table(np.random.default_rng(1))
    with pytest.raises(MoelabError) as exc:
        filter_rows(df, text)
    assert msg in str(exc.value) and "--where" in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1
