"""BACKUP's error mask: the S3 secret is hidden in every form a server may echo it (as given,
URL-encoded, quoted or escaped, base64) and so is the value of any credential `key=value` pair."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pymysql
import pytest

from mobackup.engine.errors import MobackupError
from mobackup.engine.mosql import MatrixOneSession

SECRET = "wJalr/XUtn+FEMI'K7MDENG\\bPxRfi=CY"


class RefusingConnection:
    """A connection whose every statement fails with `reason`, as MatrixOne's would."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def cursor(self) -> Any:
        reason = self.reason

        class Cursor:
            def __enter__(self) -> Cursor:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def execute(self, statement: str) -> None:
                raise pymysql.err.OperationalError(20101, reason)

        return Cursor()


def refusal(reason: str) -> str:
    session = MatrixOneSession.__new__(MatrixOneSession)
    session.connection, session.where, session.version = RefusingConnection(reason), "mo:6001", "8.0.30-MatrixOne"
    with pytest.raises(MobackupError) as caught:
        session.run_backup("s3option {}", None, "s3://bucket/staging", secret=SECRET)
    return str(caught.value)


@pytest.mark.parametrize("echo", [
    SECRET,
    quote(SECRET, safe=""),
    quote(SECRET),
    json.dumps(SECRET)[1:-1],
    SECRET.replace("'", "''"),
    base64.b64encode(SECRET.encode()).decode(),
    base64.b64encode(SECRET.encode()).decode().rstrip("="),
], ids=["plain", "url", "url-path", "json", "sql", "base64", "base64-unpadded"])
def test_every_form_of_the_secret_is_masked(echo: str) -> None:
    message = refusal(f"invalid option {echo} in s3option")
    assert echo not in message and "***" in message


@pytest.mark.parametrize("pair", [
    "'secret_access_key'='another-secret'", "secret_access_key=another-secret", '"access_key_id": "AKIAOTHER"',
    "AWS_SECRET_ACCESS_KEY=another-secret",
])
def test_credential_pairs_are_masked(pair: str) -> None:
    message = refusal(f"bad s3option {{{pair}, 'bucket'='b'}}")
    assert "another-secret" not in message and "AKIAOTHER" not in message
    assert "'bucket'='b'" in message, "only credentials are masked"
