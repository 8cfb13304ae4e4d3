"""MatrixOne with its table data in S3 (the data placement of a distributed MatrixOneCluster), for
tests: the stock standalone server configured with `../shared/matrixone/launch-s3/` (a SHARED and an
ETL file service with `backend = "MINIO"`) pointed at the suite's MinIO, a bucket and a key prefix
of the test's own. Its volume (`workdir/mo-data`) then holds only the log service, `local/` and
caches; the tables are objects under `s3://bucket/<prefix>/data/`."""

from __future__ import annotations

import re
import shutil

from mo_server import REPO, MatrixOne

LAUNCH_S3 = REPO.parent / "shared" / "matrixone" / "launch-s3"


def configure_s3(mo: MatrixOne, endpoint: str, access_key: str, secret_key: str, bucket: str, prefix: str) -> None:
    """Rewrites mo's `etc/launch/*.toml` (the launch the fixture starts) from launch-s3: SHARED at
    `bucket/prefix/data`, ETL at `bucket/prefix/etl`. The keys land in the server's own config files
    (as a MatrixOneCluster's would), never on a command line."""
    target = mo.workdir / "etc" / "launch"
    shutil.rmtree(target)
    target.mkdir(parents=True)
    for source in LAUNCH_S3.glob("*.toml"):
        text = source.read_text().replace("./etc/launch-s3/", "./etc/launch/")
        text = re.sub(r'bucket = ".*"', f'bucket = "{bucket}"', text)
        text = re.sub(r'endpoint = ".*"', f'endpoint = "{endpoint}"', text)
        text = re.sub(r'key-id = ".*"', f'key-id = "{access_key}"', text)
        text = re.sub(r'key-secret = ".*"', f'key-secret = "{secret_key}"', text)
        text = text.replace('key-prefix = "server/data"', f'key-prefix = "{prefix}/data"')
        text = text.replace('key-prefix = "server/etl"', f'key-prefix = "{prefix}/etl"')
        (target / source.name).write_text(text)


def shared_prefix(prefix: str) -> str:
    return f"{prefix}/data"
