"""A small 5-field cron parser (minute hour day-of-month month day-of-week) and next-time computation.

Supports `*`, lists, ranges, steps (`*/15`, `1-10/2`), month and weekday names, `7` as Sunday, the
macros @yearly/@annually/@monthly/@weekly/@daily/@midnight/@hourly, and `@every <duration>` (a fixed
interval from a reference time). Day-of-month and day-of-week follow Vixie cron: when both are
restricted, a day matches if either matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class CronError(ValueError):
    """An invalid cron expression; the message says which part and why."""


MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day-of-month", 1, 31, {}),
          ("month", 1, 12, MONTHS), ("day-of-week", 0, 7, DAYS))

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


def _parse_field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()

    def num(tok: str) -> int:
        tok_l = tok.lower()
        if tok_l in names:
            return names[tok_l]
        if not tok.isdigit():
            raise CronError(f"{name}: {tok!r} is not a number")
        v = int(tok)
        if not lo <= v <= hi:
            raise CronError(f"{name}: {v} is outside {lo}-{hi}")
        return v

    for part in text.split(","):
        if not part:
            raise CronError(f"{name}: empty list element in {text!r}")
        rng, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise CronError(f"{name}: bad step {step_s!r}")
            step = int(step_s)
        if rng == "*":
            start, end = lo, hi
        elif "-" in rng:
            a, b = rng.split("-", 1)
            start, end = num(a), num(b)
            if start > end:
                raise CronError(f"{name}: range {rng!r} goes backwards")
        else:
            start = num(rng)
            end = hi if step_s else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expr: str
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()
    dom_any: bool = True
    dow_any: bool = True
    every: timedelta | None = None

    def _day_matches(self, d: datetime) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.dom_any and self.dow_any:
            return True
        if self.dom_any:
            return dow
        if self.dow_any:
            return dom
        return dom or dow

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
        t = after.astimezone(tz).replace(second=0, microsecond=0) + timedelta(minutes=1)
        # Walk by the coarsest unit that does not match: at most ~4 years of days, minutes within a day.
        for _ in range(366 * 5 * 24):
            if t.month not in self.months:
                year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
                t = t.replace(year=year, month=month, day=1, hour=0, minute=0)
                continue
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0)
                continue
            if t.minute not in self.minutes:
                t = t + timedelta(minutes=1)
                continue
            # A wall time that does not exist (DST gap) is normalised by the round trip through UTC.
            return t.astimezone(UTC)
        raise CronError(f"{self.expr!r} never fires")

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
    if len(parts) != 5:
        raise CronError(f"{expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
                        f"got {len(parts)}")
    sets = [_parse_field(p, n, lo, hi, names) for p, (n, lo, hi, names) in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return Cron(expr=expr, minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3], weekdays=weekdays,
                dom_any=parts[2] == "*", dow_any=parts[4] == "*")


def zone(name: str | None) -> timezone | ZoneInfo:
    if not name or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}") from None
