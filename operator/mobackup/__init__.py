"""mo-backup-operator: physical backup and restore of MatrixOne."""

__version__ = "0.1.0"
