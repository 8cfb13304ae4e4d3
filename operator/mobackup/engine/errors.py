"""Errors the engine raises for expected failures. `str(error)` is a one-line reason for a user."""


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
