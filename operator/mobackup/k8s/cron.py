"""Cron schedules: 5-field expressions (minute hour day-of-month month day-of-week) evaluated by
`cronsim`, plus the macros and `@every <duration>` as thin wrappers.

Why cronsim rather than croniter: cronsim's stated goal is to match Debian's (Vixie) cron exactly,
including its day-of-month/day-of-week rule and its behaviour across DST transitions, with
zoneinfo; it is small, typed, dependency-free and actively released (it runs Healthchecks.io's
cron monitoring). croniter is larger, had a maintenance hand-over, and its DST handling has a
history of bugs; we need neither its seconds field nor its hashed (`H`) expressions.

Semantics (unchanged from the hand-written parser this replaces): `*`, lists, ranges, steps
(`*/15`, `1-10/2`), month and weekday names, `7` as Sunday; day-of-month and day-of-week as in
Vixie cron: when neither field starts with `*`, a day matches if EITHER matches, otherwise both
must. Times are evaluated in the schedule's time zone. Macros @yearly/@annually/@monthly/@weekly/
@daily/@midnight/@hourly expand to their 5-field forms (cronsim has none); `@every <duration>` fires
at anchor + k*interval (the anchor is the schedule's creation time). cronsim also accepts `L`, `W`
and `#` (last day, nearest weekday, nth weekday).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError


class CronError(ValueError):
    """An invalid cron expression; the message says which part and why."""


MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """'1h30m' -> 1.5 h; '7d', '2w', '45s'. Raises ValueError on anything else."""
    text = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 15m, 6h, 7d, 2w, 1h30m)")
    return timedelta(seconds=total)


@dataclass(frozen=True)
class Cron:
    expr: str
    fields: str = ""  # the 5-field form handed to cronsim (macros expanded)
    every: timedelta | None = None

    def next_after(self, after: datetime, tz: timezone | ZoneInfo = UTC,
                   anchor: datetime | None = None) -> datetime:
        """The first firing time strictly after `after` (an aware datetime); returned in UTC.

        `anchor` is the reference of `@every` (the schedule's creation time): firings are anchor + k*interval.
        """
        if self.every is not None:
            base = anchor or after
            if after < base:
                return base.astimezone(UTC)
            k = int((after - base) / self.every) + 1
            return (base + k * self.every).astimezone(UTC)
        try:
            return next(CronSim(self.fields, after.astimezone(tz))).astimezone(UTC)
        except StopIteration:  # cronsim looks 50 years ahead
            raise CronError(f"{self.expr!r} never fires") from None

    def previous_at_or_before(self, when: datetime, since: datetime, tz: timezone | ZoneInfo = UTC,
                              anchor: datetime | None = None) -> datetime | None:
        """The latest firing time in (since, when], or None: the run that is due now, if any."""
        last = None
        t = since
        for _ in range(10000):
            nxt = self.next_after(t, tz, anchor)
            if nxt > when:
                return last
            last, t = nxt, nxt
        return last


def parse(expr: str) -> Cron:
    text = " ".join(expr.split())
    low = text.lower()
    if low.startswith("@every"):
        rest = text[len("@every"):].strip()
        try:
            every = parse_duration(rest)
        except ValueError as e:
            raise CronError(f"{expr!r}: {e}") from None
        if every < timedelta(seconds=1):
            raise CronError(f"{expr!r}: the interval must be at least 1s")
        return Cron(expr=expr, every=every)
    if low in MACROS:
        text = MACROS[low]
    elif low.startswith("@"):
        raise CronError(f"{expr!r}: unknown macro (known: {', '.join(sorted(MACROS))}, @every <duration>)")
    parts = text.split(" ")
    if len(parts) != 5:  # cronsim would also take a leading seconds field: not ours to offer
        raise CronError(f"{expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
                        f"got {len(parts)}")
    try:
        CronSim(text, datetime(2000, 1, 1))  # parses (and rejects) the fields now, not at the first run
    except CronSimError as e:
        raise CronError(f"{expr!r}: {_field_problem(parts) or str(e).lower()}") from None
    return Cron(expr=expr, fields=text)


FIELD_RANGES = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
                ("day-of-week", 0, 7))


def _field_problem(parts: list[str]) -> str | None:
    """Which field is wrong and why, in words a user can act on (cronsim only says "bad hour")."""
    for part, (name, low, high) in zip(parts, FIELD_RANGES, strict=True):
        for number in re.findall(r"\d+", part):
            if not low <= int(number) <= high:
                return f"{name}: {number} is outside {low}-{high}"
    for index, (name, _, _) in enumerate(FIELD_RANGES):  # each field alone, the others `*`
        try:
            CronSim(" ".join(parts[i] if i == index else "*" for i in range(5)), datetime(2000, 1, 1))
        except CronSimError:
            return f"{name}: {parts[index]!r} is not valid"
    return None


def zone(name: str | None) -> timezone | ZoneInfo:
    if not name or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}") from None
