"""Which Completed MOBackups of a schedule to keep.

The rules are the engine's (`mobackup.engine.prune.select_kept`: restic/K8up GFS semantics, the
newest completed backup always kept), applied to the schedule's MOBackup objects so that the CLI's
`prune` and the operator's retention agree. A base is not kept for the backups that name it: every
file list is complete, so each backup restores on its own. Only the base of a run in progress waits
(the schedule spares it: that run still reads its file list).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mobackup.engine.prune import RetentionPolicy, select_kept


@dataclass(frozen=True)
class Item:
    """A Completed MOBackup: resource name, backup id, completion time."""

    name: str
    backup_id: str
    time: datetime

    # The engine's RetentionItem protocol.
    @property
    def id(self) -> str:
        return self.backup_id

    @property
    def completed(self) -> datetime:
        return self.time


@dataclass(frozen=True)
class Decision:
    keep: list[str]     # resource names, newest first
    delete: list[str]   # resource names, newest first
    reasons: dict[str, str]  # resource name -> why kept


def select(items: Iterable[Item], policy: RetentionPolicy, now: datetime, history_limit: int | None = None) -> Decision:
    """Apply the policy; with an empty policy keep the `history_limit` newest."""
    ordered = sorted(items, key=lambda i: (i.time, i.backup_id), reverse=True)
    policy = effective_policy(policy, history_limit)
    kept_ids = select_kept(ordered, policy, now)
    reasons = {it.name: kept_ids[it.backup_id] for it in ordered if it.backup_id in kept_ids}
    return Decision([it.name for it in ordered if it.name in reasons],
                    [it.name for it in ordered if it.name not in reasons], reasons)


def effective_policy(policy: RetentionPolicy, history_limit: int | None) -> RetentionPolicy:
    """A schedule's rules, or without any its history limit as keep-last."""
    return RetentionPolicy(keep_last=history_limit) if policy.empty and history_limit else policy


def policies_of_storage(schedules: Iterable[dict[str, Any]], storage: str) -> dict[str, RetentionPolicy | None]:
    """Source name -> the retention the schedules that back it up into `storage` apply (for the
    storage's cost by retention class, engine/stats.py). Two schedules of one source with different
    rules leave it without one (None: "unmanaged"); a schedule that does not parse is skipped."""
    from .models import SpecError, parse_backup, parse_schedule

    found: dict[str, RetentionPolicy | None] = {}
    for sched in schedules:
        ns = (sched.get("metadata") or {}).get("namespace") or ""
        try:
            spec = parse_schedule(sched.get("spec") or {}, ns)
            template = parse_backup(spec.template_spec, ns, template=True)
        except (SpecError, ValueError, TypeError):
            continue
        if template.storage != storage:
            continue
        policy = effective_policy(spec.retention, spec.successful_limit)
        source = template.source_name
        found[source] = policy if found.get(source, policy) == policy else None
    return found


def history_overflow(names_newest_first: list[str], limit: int) -> list[str]:
    """Objects beyond a history limit (e.g. Failed MOBackups), oldest last."""
    return names_newest_first[max(limit, 0):]
