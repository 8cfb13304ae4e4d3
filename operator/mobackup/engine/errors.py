"""Errors the engine raises for expected failures. `str(error)` is a one-line reason for a user."""

from __future__ import annotations

import base64
import json
import re

# `key=value` / `"key": "value"` pairs naming a credential, whatever the value: a server may echo an
# option list whose secret is in a form (or a key) the caller did not know.
_CREDENTIAL_PAIR = re.compile(
    r"""((?:secret[_-]?access[_-]?key|access[_-]?key[_-]?id|secret[_-]?key|session[_-]?token|password)"""
    r"""['"]?\s*[=:]\s*['"]?)[^'"\s,;&}]+""", re.IGNORECASE)


class MobackupError(Exception):
    """Base of every expected failure (bad input, unreachable storage, corrupt data...)."""


class RepositoryNotFound(MobackupError):
    """The location holds no repository."""


class RepositoryExists(MobackupError):
    """A repository was to be created where one exists already."""


class RepositoryFormatError(MobackupError):
    """The repository is of a format this version cannot read (newer, or not a repository)."""


class EncryptionKeyError(MobackupError):
    """The repository is encrypted and no key, or the wrong key, was given."""


class BackupNotFound(MobackupError):
    """No completed backup has this ID."""


class CorruptDataError(MobackupError):
    """Stored data does not match its digest, is truncated, or is missing."""


class SourceChangedError(MobackupError):
    """A file changed or vanished while it was being copied."""


class PlantedLinkError(MobackupError):
    """The data directory holds a hard link to a file of another owner."""


class StorageUnreachableError(MobackupError):
    """The storage endpoint cannot be reached (connection refused or reset, timeout)."""


class LockedError(MobackupError):
    """Another process holds a conflicting lock on the repository."""


class TargetNotEmptyError(MobackupError):
    """A restore target holds files and overwriting was not asked for."""


class ClusterRunningError(MobackupError):
    """A restore into a cluster's storage while MatrixOne still answers there."""


class VolumeFull(MobackupError):
    """The target's file system cannot hold what a run must write (the operator's reason too)."""


def mask_secret(text: str, secret: str | None) -> str:
    """`text` (a server's error message) without `secret` in any form the server may echo it:
    as given, URL-encoded, quoted or escaped (SQL, JSON, repr), base64; and without the value of any
    credential `key=value` pair."""
    if secret:
        from urllib.parse import quote, quote_plus  # here: urllib.parse is most of this module's import time

        raw = secret.encode()
        forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
                 repr(secret)[1:-1], secret.replace("'", "''"), secret.replace("'", "\\'"),
                 secret.replace("\\", "\\\\")}
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(raw).decode()
            forms |= {encoded, encoded.rstrip("=")}
        for form in sorted(forms, key=len, reverse=True):  # longest first: no form leaves part of another
            text = text.replace(form, "***")
    return _CREDENTIAL_PAIR.sub(r"\1***", text)
