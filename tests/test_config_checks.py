"""The shared config checks: the value in its type, or an InputError naming the key and the fix."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from nemo_tl.config_checks import (
    checked_choice,
    checked_flag,
    checked_int,
    checked_int_list,
    checked_number,
    checked_section,
    finite_float,
    to_plain,
)
from tests.helpers import raises_input_error


def test_values_of_the_right_type_come_back_typed():
    assert checked_number(2, "k") == 2.0 and isinstance(checked_number(2, "k"), float)
    assert checked_number(math.inf, "k") == math.inf  # τ = inf: never switch off
    assert checked_number(0, "k") == 0.0
    assert checked_int(3, "k") == 3
    assert checked_int_list(OmegaConf.create([1, 2]), "k", fix="f") == (1, 2)
    assert checked_int_list(None, "k", fix="f") == ()
    assert checked_flag(False, "k") is False
    assert checked_choice("same", ("keep_shared", "same"), "k", what="mode") == "same"
    assert checked_section(OmegaConf.create({"a": "${b}", "b": 1}), "k", ["a", "b"], fix="f") == {"a": 1, "b": 1}
    assert checked_section(None, "k", ["a"], fix="f") == {}
    assert to_plain(OmegaConf.create({"a": [1]})) == {"a": [1]} and to_plain(5) == 5


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: checked_number(-1, "model.lid.weight"), r"model\.lid\.weight: must be a number ≥ 0, got -1"),
        (lambda: checked_number(0, "t", positive=True), r"t: must be a number > 0"),
        (lambda: checked_number(math.nan, "t"), r"t: must be a number ≥ 0, got nan"),
        (lambda: checked_number(math.inf, "t", finite=True), r"t: must be a finite number"),
        (lambda: checked_number(True, "t"), r"got True"),  # a bool is not a number
        (lambda: checked_number("high", "t"), r"got 'high'"),
        (lambda: checked_int(2.0, "k"), r"k: must be a whole number ≥ 0, got 2\.0"),
        (lambda: checked_int(0, "k", minimum=1), r"k: must be a whole number ≥ 1"),
        (lambda: checked_int_list([1, True], "k", fix="f"), r"k: must be a list of whole numbers"),
        (lambda: checked_flag("false", "k"), r"k: must be true or false, got 'false'"),
        (lambda: checked_choice("copy", ("keep_shared", "same"), "k", what="vocabulary mode"),
         r"k: unknown vocabulary mode 'copy'.*keep_shared, same"),
        (lambda: checked_section("x.nemo", "model.transfer", ["base_model"], fix="write base_model: x"),
         r"model\.transfer: must be a mapping.*base_model: x"),
        (lambda: checked_section({"wieght": 1}, "model.lid", ["enabled", "weight"], fix="f"),
         r"model\.lid\.wieght: unknown key\(s\) wieght.*enabled, weight"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(call, pattern):
    raises_input_error(call, pattern)


def test_finite_float_reads_manifest_numbers():
    assert finite_float(1) == 1.0 and finite_float(2.5) == 2.5
    assert [finite_float(v) for v in (True, "1.0", None, math.nan, math.inf)] == [None] * 5
