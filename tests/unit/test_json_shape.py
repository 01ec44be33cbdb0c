"""`check_shape`: its fast pass refuses exactly what is faulty, and the refusal names the path to the fault."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import InvalidRequest
from app.json_body import MAX_DEPTH, MAX_SAFE_INTEGER, check_shape


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _faulty(value: Any, depth: int = 0) -> bool:
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value
        return any(_faulty(child, depth + 1) for child in children)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"messages": [{"role": "user", "content": "a"}], "seed": MAX_SAFE_INTEGER + 1}, "seed", 422),
        ({"tools": [{"parameters": {"x": [1, 2, -(2**60)]}}]}, "tools.0.parameters.x.2", 422),
        ({"tools": _nested(MAX_DEPTH + 2)}, "tools" + ".a" * (MAX_DEPTH - 1), 400),
    ],
)
def test_a_refusal_names_the_path_to_the_fault(body: dict[str, Any], field: str, status: int) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_shape(body)
    assert refused.value.field == field
    assert refused.value.status == status


def test_the_largest_safe_values_and_the_deepest_allowed_nesting_pass() -> None:
    check_shape({"a": MAX_SAFE_INTEGER, "b": -MAX_SAFE_INTEGER, "c": True, "d": 1e300, "e": _nested(MAX_DEPTH - 1)})


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=3)
    | st.integers(min_value=-(2**60), max_value=2**60),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=3), _JSON, max_size=4), st.integers(min_value=0, max_value=MAX_DEPTH + 2))
def test_exactly_the_faulty_bodies_are_refused(body: dict[str, Any], depth: int) -> None:
    body = {"deep": _nested(depth), **body}
    if _faulty(body):
        with pytest.raises(InvalidRequest):
            check_shape(body)
    else:
        check_shape(body)
