"""Length configurations: construction, the command-line form, validation and per-input keep counts."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from dynamic_tinybert.length_config import LengthConfig, LengthConfigError, full_length, is_full_length

LAT_TEXT = "269,253,252,202,104,34"
LAT_COUNTS = (269, 253, 252, 202, 104, 34)


# --- construction and the command-line form ---------------------------------------------------------------


def test_tokens_holds_absolute_counts():
    config = LengthConfig.tokens(LAT_COUNTS)

    assert config.values == LAT_COUNTS
    assert config.relative is False
    assert config.protect_question is False


def test_ratios_holds_keep_fractions():
    config = LengthConfig.ratios([1.0, 0.8, 0.5])

    assert config.values == (1.0, 0.8, 0.5)
    assert config.relative is True


def test_parse_reads_integers_as_token_counts():
    assert LengthConfig.parse(LAT_TEXT) == LengthConfig.tokens(LAT_COUNTS)


def test_parse_reads_decimals_as_ratios():
    assert LengthConfig.parse("1.0,0.8,0.5") == LengthConfig.ratios([1.0, 0.8, 0.5])


def test_parse_reads_plus_q_suffix_as_protect_question():
    assert LengthConfig.parse(LAT_TEXT + "+q") == LengthConfig.tokens(LAT_COUNTS, protect_question=True)
    assert LengthConfig.parse("1.0,0.5+q") == LengthConfig.ratios([1.0, 0.5], protect_question=True)


def test_parse_ignores_whitespace_around_entries():
    assert LengthConfig.parse(" 1.0, 0.8 ,0.5 ") == LengthConfig.ratios([1.0, 0.8, 0.5])


@pytest.mark.parametrize(
    "config",
    [
        LengthConfig.tokens(LAT_COUNTS),
        LengthConfig.tokens([384], protect_question=True),
        LengthConfig.ratios([1.0, 0.8, 0.5]),
        LengthConfig.ratios([1.0]),
        LengthConfig.ratios([0.9, 0.333, 0.1], protect_question=True),
    ],
    ids=str,
)
def test_str_round_trips_through_parse(config):
    assert LengthConfig.parse(str(config)) == config


def test_str_of_a_tiny_ratio_round_trips_through_parse():
    config = LengthConfig.ratios([1e-5])

    assert LengthConfig.parse(str(config)) == config


@pytest.mark.parametrize(
    "config",
    [
        LengthConfig.tokens(LAT_COUNTS),
        LengthConfig.tokens([10, 5], protect_question=True),
        LengthConfig.ratios([1.0, 0.7, 0.25], protect_question=True),
    ],
    ids=str,
)
def test_to_dict_round_trips_through_from_dict(config):
    assert LengthConfig.from_dict(config.to_dict()) == config


def test_from_dict_reads_lengths_and_ratios_keys():
    assert LengthConfig.from_dict({"lengths": [3, 2]}) == LengthConfig.tokens([3, 2])
    assert LengthConfig.from_dict({"ratios": [1.0, 0.5], "protect_question": True}) == LengthConfig.ratios(
        [1.0, 0.5], protect_question=True
    )


def test_from_dict_without_lengths_or_ratios_is_an_error():
    with pytest.raises(LengthConfigError, match="neither 'lengths' nor 'ratios'"):
        LengthConfig.from_dict({"protect_question": True})


def test_full_length_is_recognised_and_none_is_full_length():
    assert is_full_length(full_length(4))
    assert is_full_length(None)
    assert is_full_length(LengthConfig.ratios([1.0, 1.0]))
    assert not is_full_length(LengthConfig.ratios([1.0, 0.99]))
    assert not is_full_length(LengthConfig.tokens([512, 512]))


# --- validation ---------------------------------------------------------------------------------------------


def test_length_config_error_is_a_value_error():
    assert issubclass(LengthConfigError, ValueError)


@pytest.mark.parametrize(
    "make",
    [lambda: LengthConfig.tokens([100, 200, 50]), lambda: LengthConfig.ratios([1.0, 0.5, 0.8])],
    ids=["tokens", "ratios"],
)
def test_increasing_entries_are_rejected_naming_the_layer(make):
    with pytest.raises(LengthConfigError, match=r"must not increase.*layer 1"):
        make()


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("nan")])
def test_ratio_outside_zero_one_is_rejected_naming_the_entry(ratio):
    with pytest.raises(LengthConfigError, match=r"entry 1 .*\(0, 1\]"):
        LengthConfig.ratios([1.0, ratio])


@pytest.mark.parametrize("count", [0, -3])
def test_token_count_below_one_is_rejected_naming_the_entry(count):
    with pytest.raises(LengthConfigError, match=r"entry 1 .*integers >= 1"):
        LengthConfig.tokens([5, count])


def test_non_integer_token_count_is_rejected_by_the_constructor():
    with pytest.raises(LengthConfigError, match=r"entry 1 is 2.5.*integers"):
        LengthConfig((3, 2.5), relative=False)


@pytest.mark.parametrize(
    "make",
    [lambda: LengthConfig.tokens([3, 2.5]), lambda: LengthConfig.from_dict({"lengths": [3, 2.5]})],
    ids=["tokens", "from_dict"],
)
def test_non_integer_token_count_is_rejected_not_truncated(make):
    with pytest.raises(LengthConfigError, match="entry 1"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: LengthConfig.tokens([]),
        lambda: LengthConfig.ratios([]),
        lambda: LengthConfig.parse(""),
        lambda: LengthConfig.parse(" , "),
        lambda: LengthConfig.parse("+q"),
    ],
    ids=["tokens", "ratios", "parse-empty", "parse-commas", "parse-suffix-only"],
)
def test_empty_config_is_rejected(make):
    with pytest.raises(LengthConfigError, match="empty"):
        make()


@pytest.mark.parametrize("text", ["abc", "1.0,x", "300;200", "0.5-0.3"])
def test_garbage_text_is_rejected_quoting_it(text):
    with pytest.raises(LengthConfigError, match="not a comma-separated list of numbers") as error:
        LengthConfig.parse(text)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize("text", ["inf", "nan", "1e400"])
def test_non_finite_numbers_are_rejected_as_length_config_errors(text):
    with pytest.raises(LengthConfigError):
        LengthConfig.parse(text)


def test_parse_error_for_ratio_above_one_names_the_entry():
    with pytest.raises(LengthConfigError, match=r"entry 0 is 1.5"):
        LengthConfig.parse("1.5,0.5")


def test_check_fits_rejects_wrong_number_of_layers():
    with pytest.raises(LengthConfigError, match="has 3 entries; the model has 6 layers"):
        LengthConfig.ratios([1.0, 0.8, 0.5]).check_fits(num_layers=6, max_positions=512)


def test_check_fits_rejects_first_count_above_max_positions():
    with pytest.raises(LengthConfigError, match="keeps 600 tokens; the model has 512 positions"):
        LengthConfig.tokens([600, 300]).check_fits(num_layers=2, max_positions=512)


def test_check_fits_accepts_matching_config():
    LengthConfig.tokens([512, 300]).check_fits(num_layers=2, max_positions=512)
    LengthConfig.ratios([1.0, 0.5]).check_fits(num_layers=2, max_positions=8)


# --- keep counts ---------------------------------------------------------------------------------------------


def test_keep_counts_has_one_row_per_input_and_one_column_per_layer():
    counts = LengthConfig.ratios([1.0, 0.5, 0.5, 0.25]).keep_counts(torch.tensor([10, 20, 7]))

    assert counts.shape == (3, 4)
    assert counts.dtype == torch.long


def test_ratio_keep_counts_round_up():
    counts = LengthConfig.ratios([1.0, 0.7, 0.5]).keep_counts(torch.tensor([10, 9]))

    assert counts.tolist() == [[10, 7, 5], [9, 7, 5]]


def test_ratio_keep_counts_are_not_pushed_up_by_float_rounding():
    # 0.07 * 100 and 0.28 * 25 are 7.000000000000001 in floating point
    assert LengthConfig.ratios([0.07]).keep_counts(torch.tensor([100]))[0, 0] == 7
    assert LengthConfig.ratios([0.28]).keep_counts(torch.tensor([25]))[0, 0] == 7


def test_ratio_keep_counts_are_exact_ceil_of_ratio_times_length():
    lengths = torch.arange(1, 513)
    for ratio in [i / 100 for i in range(1, 101)] + [0.333, 0.125, 0.875]:
        counts = LengthConfig.ratios([ratio]).keep_counts(lengths)[:, 0]
        expected = [max(1, math.ceil(Fraction(str(ratio)) * n)) for n in range(1, 513)]
        assert counts.tolist() == expected, ratio


def test_ratio_keep_counts_never_drop_below_one_token():
    counts = LengthConfig.ratios([0.01, 0.01]).keep_counts(torch.tensor([1, 3, 50]))

    assert counts.tolist() == [[1, 1], [1, 1], [1, 1]]


def test_ratio_keep_counts_never_exceed_the_real_length():
    lengths = torch.arange(1, 100)
    counts = LengthConfig.ratios([1.0, 0.99, 0.5]).keep_counts(lengths)

    assert (counts <= lengths[:, None]).all()
    assert counts[:, 0].tolist() == lengths.tolist()


def test_token_keep_counts_are_clamped_to_the_real_length():
    counts = LengthConfig.tokens(LAT_COUNTS).keep_counts(torch.tensor([384, 260, 100, 20]))

    assert counts.tolist() == [
        [269, 253, 252, 202, 104, 34],
        [260, 253, 252, 202, 104, 34],
        [100, 100, 100, 100, 100, 34],
        [20, 20, 20, 20, 20, 20],
    ]


def test_keep_counts_never_increase_across_layers():
    lengths = torch.arange(1, 200)
    for config in (LengthConfig.tokens(LAT_COUNTS), LengthConfig.ratios([1.0, 0.9, 0.73, 0.5, 0.31, 0.1])):
        counts = config.keep_counts(lengths)
        assert (counts[:, 1:] <= counts[:, :-1]).all()
