"""Hypothesis strategies that break valid JSON documents the way hostile or buggy peers would.

``mutated(document)`` draws a copy of ``document`` with a few changes, each anywhere in it: a
value replaced by one of another type (lists and maps nested in each other where a name is
expected, huge or non-finite numbers, booleans, null, odd strings), a field removed, or a field
added. Every other part of the document stays as it was, so that most mutations land on a
field the parser reads, deep inside an otherwise plausible object::

    @given(mutated(service()))
    def test_...(obj): ...
"""

from __future__ import annotations

import copy
from typing import Any, Final

from hypothesis import strategies as st

# What orjson decodes an API answer's integers into; YAML files have no such limit (up to 4000
# digits here: hypothesis must be able to print an example, and Python prints 4300 at most).
JSON_INTEGERS: Final = st.integers(min_value=-(2**63), max_value=2**64 - 1)
ANY_INTEGERS: Final = st.one_of(
    JSON_INTEGERS, st.sampled_from([2**64, -(2**100), 10**30, 10**4000, -(10**4000)])
)
ODD_STRINGS: Final = st.sampled_from(
    [
        "",
        " ",
        "None",
        "null",
        "0",
        "-1",
        "65536",
        "1e400",
        "NaN",
        "IPv4",
        "IPv6",
        "FQDN",
        "TCP",
        "SCTP",
        "ClientIP",
        "Local",
        "10.0.0.1",
        "10.0.0.256",
        "::1",
        "fe80::1%eth0",
        "1.2.3.4/24",
        "0001-01-01T00:00:00",
        "9999-12-31T23:59:59-14:00",
        "30s",
        "99999999999h",
        "-5s",
        "100m",
        "1e999",
        "\x00",
        "é" * 3,
        "a" * 5000,
        "http://user:pass@example.invalid/",
    ]
)


def hostile_values(integers: st.SearchStrategy[int] = JSON_INTEGERS) -> st.SearchStrategy[Any]:
    """Any JSON value, nested a little: what a wrongly typed field may hold."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        integers,
        st.floats(allow_nan=True, allow_infinity=True),
        ODD_STRINGS,
        st.text(max_size=12),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.one_of(ODD_STRINGS, st.text(max_size=8)), children, max_size=3),
        ),
        max_leaves=6,
    )


def _places(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``document``, the document itself included."""
    places: list[tuple[Any, Any]] = []

    def visit(container: Any, key: Any) -> None:
        places.append((container, key))
        value = container[key]
        if isinstance(value, dict):
            for child in list(value):
                visit(value, child)
        elif isinstance(value, list):
            for index in range(len(value)):
                visit(value, index)

    visit([document], 0)
    return places


@st.composite
def mutated(
    draw: st.DrawFn,
    document: Any,
    *,
    max_changes: int = 3,
    integers: st.SearchStrategy[int] = JSON_INTEGERS,
) -> Any:
    """A copy of ``document`` with 1 to ``max_changes`` changes (see the module docstring)."""
    root = [copy.deepcopy(document)]
    values = hostile_values(integers)
    for _ in range(draw(st.integers(1, max_changes))):
        places = _places(root[0])
        container, key = draw(st.sampled_from(places))
        change = draw(st.sampled_from(["replace", "wrap", "remove", "add"]))
        if change == "replace" or (change == "remove" and container is root):
            container[key] = draw(values)
        elif change == "wrap":  # a list or a map where a scalar belongs, or one level deeper
            container[key] = draw(st.sampled_from([[container[key]], {"x": container[key]}]))
        elif change == "remove":
            del container[key]
        elif isinstance(container[key], dict):
            container[key][draw(st.text(max_size=8))] = draw(values)
        else:
            container[key] = draw(values)
    return root[0]
