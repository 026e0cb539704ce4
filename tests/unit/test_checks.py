"""fairfleet.checks: the one positive / positive-integer check, against the plain predicate."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairfleet.checks import check_positive, check_positive_int
from fairfleet.errors import ConfigError


@given(
    value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5),
    allow_zero=st.booleans(),
)
def test_check_positive_is_the_predicate(value: float, allow_zero: bool) -> None:
    accepted = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if accepted:
        assert check_positive("x", value, allow_zero=allow_zero) == float(value)
    else:
        bound = ">= 0" if allow_zero else "> 0"
        with pytest.raises(ConfigError, match=rf"^x must be finite and {bound}\. Found "):
            check_positive("x", value, allow_zero=allow_zero)


@pytest.mark.parametrize("value", ["1", None, [1.0]])
def test_non_numbers_are_config_errors_naming_the_value(value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"Found {value}")):
        check_positive("lr", value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (1, True),
        (np.int64(3), True),
        (0, False),
        (-1, False),
        (True, False),
        (2.0, False),
        ("2", False),
    ],
)
def test_check_positive_int(value: Any, ok: bool) -> None:
    if ok:
        assert check_positive_int("n", value) == int(value)
    else:
        with pytest.raises(ConfigError, match=rf"^n must be a positive integer\. Found {value!r}"):
            check_positive_int("n", value)
