from datetime import timedelta

from core.durations import describe_duration


def test_round_durations_take_their_unit() -> None:
    assert describe_duration(timedelta(days=7)) == "7 days"
    assert describe_duration(timedelta(hours=1)) == "1 hour"
    assert describe_duration(timedelta(minutes=90)) == "90 min"
    assert describe_duration(timedelta(seconds=2.5)) == "2.5 s"


def test_a_long_uneven_duration_is_said_in_exact_seconds() -> None:
    # `:g` said "1e+06 s" (a second lost, in scientific notation) and "1.23457e+06 s"
    assert describe_duration(timedelta(seconds=1_000_001)) == "1000001 s"
    assert describe_duration(timedelta(seconds=1_234_567.5)) == "1234567.5 s"
