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
    if policy.empty:
        policy = RetentionPolicy(keep_last=history_limit) if history_limit else policy
    kept_ids = select_kept(ordered, policy, now)
    reasons = {it.name: kept_ids[it.backup_id] for it in ordered if it.backup_id in kept_ids}
    return Decision([it.name for it in ordered if it.name in reasons],
                    [it.name for it in ordered if it.name not in reasons], reasons)


def history_overflow(names_newest_first: list[str], limit: int) -> list[str]:
    """Objects beyond a history limit (e.g. Failed MOBackups), oldest last."""
    return names_newest_first[max(limit, 0):]
