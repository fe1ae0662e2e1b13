"""core.options: each kind of option against values written out by hand, accepted (and how they are stored) or
refused (with the option, the value and what is allowed in the message)."""
import math

import numpy as np
import pytest

from open_clip_elip.core.options import AnyOf, Boolean, Choice, Count, Default, ListOf, Ratio, check_options

SPEC = {"flag": Boolean(), "n": Count(), "layers": Count(1), "rate": Ratio(), "lam": Ratio(closed_low=True),
        "mode": Choice(("a", "b")), "ratios": ListOf(Ratio()), "r": Default(AnyOf((Count(), ListOf(Count()))))}


@pytest.mark.parametrize("option, value, stored", [
    ("flag", True, True), ("flag", False, False),
    ("n", 0, 0), ("n", 7, 7), ("n", np.int64(3), 3), ("layers", 1, 1),
    ("rate", 1, 1.0), ("rate", 0.25, 0.25), ("rate", np.float32(0.5), 0.5), ("lam", 0, 0.0), ("lam", 1.0, 1.0),
    ("mode", "b", "b"),
    ("ratios", [0.5, 1], (0.5, 1.0)), ("ratios", (0.1,), (0.1,)), ("ratios", [], ()),
    ("r", None, None), ("r", 4, 4), ("r", [1, 0, 2], (1, 0, 2)),
])
def test_accepted_values_and_how_they_are_stored(option, value, stored):
    checked = check_options("x_cfg", SPEC, {option: value})
    assert checked == {option: stored} and type(checked[option]) is type(stored)


@pytest.mark.parametrize("option, value, allowed", [
    ("flag", "false", "true or false (a boolean, not a string or a number)"),
    ("flag", 0, "true or false (a boolean, not a string or a number)"),
    ("flag", None, "true or false (a boolean, not a string or a number)"),
    ("n", True, "an integer >= 0"),  # a bool is no count
    ("n", -1, "an integer >= 0"),
    ("n", 2.0, "an integer >= 0"),
    ("n", "2", "an integer >= 0"),
    ("layers", 0, "an integer >= 1"),
    ("rate", 0, "a number in (0, 1]"),
    ("rate", 1.0000001, "a number in (0, 1]"),
    ("rate", math.nan, "a number in (0, 1]"),
    ("rate", math.inf, "a number in (0, 1]"),
    ("rate", True, "a number in (0, 1]"),
    ("rate", "0.5", "a number in (0, 1]"),
    ("lam", -0.1, "a number in [0, 1]"),
    ("mode", "A", "one of ['a', 'b']"),
    ("mode", None, "one of ['a', 'b']"),
    ("ratios", "0.5", "a list, each item a number in (0, 1]"),
    ("ratios", 0.5, "a list, each item a number in (0, 1]"),
    ("r", True, "an integer >= 0, or a list, each item an integer >= 0, or null for the default"),
    ("r", [1, -1], "an integer >= 0, or a list, each item an integer >= 0, or null for the default"),
])
def test_refused_values_name_the_option_the_value_and_what_is_allowed(option, value, allowed):
    with pytest.raises(ValueError) as error:
        check_options("x_cfg", SPEC, {option: value})
    assert str(error.value) == f"x_cfg.{option} must be {allowed}; got {value!r} ({type(value).__name__})"


def test_a_refused_list_item_is_named():
    with pytest.raises(ValueError) as error:
        check_options("x_cfg", SPEC, {"ratios": [0.9, "0.5"]})
    assert str(error.value) == ("x_cfg.ratios must be a list, each item a number in (0, 1]; got [0.9, '0.5'] "
                                "(item 1: '0.5') (list)")


def test_unknown_options_are_named_before_any_value_is_checked():
    with pytest.raises(ValueError) as error:
        check_options("x_cfg", SPEC, {"flag": "no", "zz": 1, "aa": 2})
    assert str(error.value) == f"x_cfg: unknown option(s) ['aa', 'zz']; accepted options are {list(SPEC)}"


def test_only_the_given_options_are_returned():
    assert check_options("x_cfg", SPEC, {}) == {}
    assert check_options("x_cfg", SPEC, {"mode": "a", "n": 2}) == {"mode": "a", "n": 2}
