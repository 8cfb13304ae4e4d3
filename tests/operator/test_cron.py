"""Schedules' cron semantics on top of cronsim: the documented rules (Vixie day-of-month/day-of-week,
macros, @every, time zones with Debian cron's DST behaviour, 5 fields only)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mobackup.k8s import cron


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


BERLIN = cron.zone("Europe/Berlin")


@pytest.mark.parametrize("expr,after,expected", [
    ("0 0 13 * fri", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),  # both restricted: either matches
    ("0 0 */2 * mon", "2026-01-01T00:00:00", "2026-01-05T00:00:00"),  # a field starting with *: both must
    ("@weekly", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),
    ("@daily", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),
    ("@midnight", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),
    ("@monthly", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
    ("@yearly", "2026-01-01T00:00:00", "2027-01-01T00:00:00"),
    ("@annually", "2026-06-01T00:00:00", "2027-01-01T00:00:00"),
    ("0 3 * * MON-fri", "2026-01-02T03:00:00", "2026-01-05T03:00:00"),
    ("*/20 * * * *", "2026-01-01T10:00:00.5", "2026-01-01T10:20:00"),  # strictly after, sub-second too
])
def test_next(expr: str, after: str, expected: str) -> None:
    assert cron.parse(expr).next_after(t(after)) == t(expected)


def test_daylight_saving_time_like_debian_cron() -> None:
    daily = cron.parse("30 2 * * *")
    # 2026-03-29 02:30 does not exist in Berlin: the run happens when the clock jumps (03:00 CEST).
    assert daily.next_after(t("2026-03-28T12:00:00"), BERLIN) == t("2026-03-29T01:00:00")
    # 2026-10-25 02:30 happens twice: one run, at the first, then the next day.
    first = daily.next_after(t("2026-10-24T12:00:00"), BERLIN)
    assert first == t("2026-10-25T00:30:00")
    assert daily.next_after(first, BERLIN) == t("2026-10-26T01:30:00")
    # A job more frequent than hourly runs in both repeated hours.
    half = cron.parse("*/30 * * * *")
    got, x = [], t("2026-10-24T23:50:00")
    for _ in range(6):
        x = half.next_after(x, BERLIN)
        got.append(x)
    assert got == [t("2026-10-25T00:00:00"), t("2026-10-25T00:30:00"), t("2026-10-25T01:00:00"),
                   t("2026-10-25T01:30:00"), t("2026-10-25T02:00:00"), t("2026-10-25T02:30:00")]


@pytest.mark.parametrize("bad,says", [
    ("0 0 * * * *", "expected 5 fields"),  # cronsim would read a seconds field: not part of our API
    ("0 0 31 2 *", "day-of-month"),        # never fires: rejected when parsed, not at the first run
    ("61 * * * *", "minute"),
    ("0 25 * * *", "hour"),
    ("0 0 * 13 *", "month"),
    ("0 0 * * 8", "day-of-week"),
    ("@every 0s", "at least 1s"),
])
def test_rejects_with_the_part(bad: str, says: str) -> None:
    with pytest.raises(cron.CronError, match=says):
        cron.parse(bad)


def test_every_is_anchored() -> None:
    c = cron.parse("@every 6h")
    anchor = t("2026-01-01T01:00:00")
    assert c.next_after(t("2026-01-01T00:00:00"), anchor=anchor) == anchor
    assert c.next_after(t("2026-01-01T07:00:00"), BERLIN, anchor=anchor) == t("2026-01-01T13:00:00")
