"""FLOPs targets: absolute (0.3G, 300M) or relative (0.5x); anything else is a clear error."""

from __future__ import annotations

import pytest

from pruning.targets import parse_target


@pytest.mark.parametrize(("text", "macs"), [("0.3G", 3e8), ("300M", 3e8), ("300m", 3e8), ("2.5e8", 2.5e8), (" 40K ", 4e4)])
def test_absolute(text: str, macs: float) -> None:
    target = parse_target(text)
    assert target.macs == pytest.approx(macs) and target.fraction is None
    assert target.resolve(1e9) == pytest.approx(macs)


def test_fraction_of_current() -> None:
    target = parse_target("0.5x")
    assert target.fraction == 0.5 and target.macs is None
    assert target.resolve(125.0e6) == pytest.approx(62.5e6)


@pytest.mark.parametrize(
    ("text", "message"),
    [("0", "positive"), ("-1M", "positive"), ("0x", "positive"), ("-0.5x", "positive"), ("1x", "below 1x"),
     ("1.5X", "below 1x"), ("abc", "cannot parse"), ("", "cannot parse"), ("0.3Q", "cannot parse"), ("x", "cannot parse")],
)
def test_bad_targets(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target(text)


def test_target_at_or_above_current() -> None:
    with pytest.raises(ValueError, match="at or above"):
        parse_target("300M").resolve(300e6)
    with pytest.raises(ValueError, match="at or above"):
        parse_target("1G").resolve(300e6)


@pytest.mark.parametrize(("text", "hint"), [("0.3", "did you mean 0.3x .* or 0.3G"), ("300", "did you mean 300M")])
def test_a_bare_number_is_a_slip_for_a_unit(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_target(text)
