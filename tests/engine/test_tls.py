"""S3 over TLS with a private CA (`--s3-ca-bundle`), against a real S3 server (SeaweedFS) serving HTTPS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster.s3 import start_s3
from mobackup.sample import generate_mo_data, snapshot_tree

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def _write_ca_and_server_cert(certs: Path) -> Path:
    """A private CA, and a server certificate for 127.0.0.1 signed by it ."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mobackup test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    certs.mkdir(parents=True)
    (certs / "public.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / "private.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    ca_file = certs.parent / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_file


@pytest.fixture
def tls_s3(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    ca_file = _write_ca_and_server_cert(tmp_path / "certs")
    server = start_s3(tmp_path / "s3", bucket="tls",
                      tls=(tmp_path / "certs" / "public.crt", tmp_path / "certs" / "private.key", ca_file))
    try:
        assert server.endpoint.startswith("https://")
        yield server.endpoint, ca_file, {"AWS_ACCESS_KEY_ID": server.access_key,
                                         "AWS_SECRET_ACCESS_KEY": server.secret_key,
                                         "AWS_REGION": "us-east-1", "MOBACKUP_S3_PATH_STYLE": "true"}
    finally:
        server.stop()


def test_backup_and_restore_over_tls_with_a_private_ca(tls_s3: tuple[str, Path, dict[str, str]],
                                                       tmp_path: Path) -> None:
    endpoint, ca_file, credentials = tls_s3
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | credentials
    data = generate_mo_data(tmp_path / "mo-data", seed=2, objects=10)
    repo = ["--repo", "s3://tls/mo", "--s3-endpoint", endpoint]

    untrusted = subprocess.run([MOBACKUP, "backup", "--data-dir", str(data), *repo], env=env,
                               capture_output=True, text=True)
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr.replace(" ", "_").upper()

    backup = subprocess.run([MOBACKUP, "backup", "--data-dir", str(data), *repo, "--s3-ca-bundle", str(ca_file),
                             "--json"], env=env, capture_output=True, text=True, check=True)
    backup_id = json.loads(backup.stdout)["id"]
    env_with_ca = env | {"AWS_CA_BUNDLE": str(ca_file)}  # the same, from the environment
    subprocess.run([MOBACKUP, "restore", backup_id, *repo, "--target", str(tmp_path / "restored")], env=env_with_ca,
                   check=True, capture_output=True)
    assert snapshot_tree(tmp_path / "restored") == snapshot_tree(data)


def test_the_ingest_reader_verifies_the_certificate_as_the_client_does(tls_s3: tuple[str, Path, dict[str, str]],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """engine/s3_get.py's S3Reader (an ingest's HEAD and GET) over HTTPS: refused without the private CA
    (nor retried into success), read with it as --s3-ca-bundle or AWS_CA_BUNDLE give it."""
    from mobackup.engine.errors import StorageUnreachableError
    from mobackup.engine.online_s3 import S3Place
    from mobackup.engine.s3_get import S3Reader

    endpoint, ca_file, credentials = tls_s3
    for name in [n for n in os.environ if n.startswith("AWS_")] + ["REQUESTS_CA_BUNDLE"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    trusted = S3Place.from_env("s3://tls/in", "MOBACKUP_STAGING_", endpoint=endpoint, ca_bundle=str(ca_file))
    trusted.backend().write("obj", b"over tls")
    untrusted = S3Place.from_env("s3://tls/in", "MOBACKUP_STAGING_", endpoint=endpoint)
    reader = untrusted.reader()
    assert isinstance(reader, S3Reader)
    with pytest.raises(StorageUnreachableError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        reader.read("obj")
    assert trusted.reader().read("obj") == b"over tls"
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    from_env = S3Place.from_env("s3://tls/in", "MOBACKUP_STAGING_", endpoint=endpoint).reader()
    assert isinstance(from_env, S3Reader) and from_env.read("obj") == b"over tls"
