"""Certificates and keys for the test control plane (ECDSA P-256: generated in milliseconds)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The API server's serving certificate must verify for every name in-cluster clients use:
# the local node points KUBERNETES_SERVICE_HOST at 127.0.0.1.
SERVING_IPS = ["127.0.0.1", "10.0.0.1"]
SERVING_DNS = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local"]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_pki(pki_dir: Path, extra_ips: tuple[str, ...] = ()) -> dict[str, Path]:
    """CA, API-server serving cert (also valid for extra_ips: a real node's pods reach the API
    server at its Service IP and the host's address), service-account signing key pair, and a
    client certificate the API server presents to kubelets. Returns the file paths."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=30)

    ca_key = _key()
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("mobackup-test-ca")).issuer_name(_name("mobackup-test-ca"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    srv_key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in SERVING_DNS]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys([*SERVING_IPS, *extra_ips])]
    srv_cert = (
        x509.CertificateBuilder().subject_name(_name("kube-apiserver")).issuer_name(ca_cert.subject)
        .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(later)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    client_key = _key()
    client_cert = (
        x509.CertificateBuilder().subject_name(_name("kube-apiserver-kubelet-client", "system:masters"))
        .issuer_name(ca_cert.subject).public_key(client_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = _key()
    files = {
        "kubelet_client_crt": pki_dir / "kubelet-client.crt", "kubelet_client_key": pki_dir / "kubelet-client.key",
        "ca_crt": pki_dir / "ca.crt", "ca_key": pki_dir / "ca.key",
        "apiserver_crt": pki_dir / "apiserver.crt", "apiserver_key": pki_dir / "apiserver.key",
        "sa_key": pki_dir / "sa.key", "sa_pub": pki_dir / "sa.pub",
    }
    files["ca_crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, files["ca_key"])
    files["apiserver_crt"].write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(srv_key, files["apiserver_key"])
    _write_key(sa_key, files["sa_key"])
    files["kubelet_client_crt"].write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(client_key, files["kubelet_client_key"])
    files["sa_pub"].write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return files
