"""Certificates for a local control plane, made with the ``openssl`` command line.

One CA signs the API server's serving certificate and one client certificate per
component; the service-account key pair signs tokens. Everything lives in one folder
that dies with the cluster.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from capinfer.errors import UserError

CERT_DAYS = 3650


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate's subject: CN is the user name, O the groups."""

    file_stem: str
    common_name: str
    organization: str | None = None


ADMIN = ClientIdentity("admin", "capinfer-admin", "system:masters")
CONTROLLER_MANAGER = ClientIdentity("controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("scheduler", "system:kube-scheduler")
# kwok updates node and pod status for every fake node: it acts as an administrator.
KWOK = ClientIdentity("kwok", "kwok-controller", "system:masters")
CLIENT_IDENTITIES = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK)


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "sa.pub"

    def client_cert(self, identity: ClientIdentity) -> Path:
        return self.directory / f"{identity.file_stem}.crt"

    def client_key(self, identity: ClientIdentity) -> Path:
        return self.directory / f"{identity.file_stem}.key"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise UserError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl("genrsa", "-out", str(path), "2048", cwd=path.parent)
    path.chmod(0o600)


def _sign(pki: Pki, stem: str, subject: str, extensions: str) -> None:
    directory = pki.directory
    key = directory / f"{stem}.key"
    csr = directory / f"{stem}.csr"
    ext = directory / f"{stem}.ext"
    _new_key(key)
    _openssl("req", "-new", "-key", key.name, "-subj", subject, "-out", csr.name, cwd=directory)
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", pki.ca_cert.name, "-CAkey", pki.ca_key.name,
        "-CAcreateserial", "-out", f"{stem}.crt", "-days", str(CERT_DAYS), "-sha256",
        "-extfile", ext.name,
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def create_pki(directory: Path, service_ip: str) -> Pki:
    """Create a CA, the API server's serving certificate, client certificates and SA keys."""
    if shutil.which("openssl") is None:
        raise UserError("openssl is not installed (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    _new_key(pki.ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", pki.ca_key.name, "-subj", "/CN=capinfer-local-ca",
        "-days", str(CERT_DAYS), "-sha256", "-out", pki.ca_cert.name,
        cwd=directory,
    )  # fmt: skip
    alt_names = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{service_ip}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    _sign(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        f"subjectAltName={alt_names}\nextendedKeyUsage=serverAuth\n",
    )
    for identity in CLIENT_IDENTITIES:
        subject = f"/CN={identity.common_name}"
        if identity.organization:
            subject = f"/O={identity.organization}{subject}"
        _sign(pki, identity.file_stem, subject, "extendedKeyUsage=clientAuth\n")
    _new_key(pki.service_account_key)
    _openssl(
        "rsa", "-in", pki.service_account_key.name, "-pubout",
        "-out", pki.service_account_public_key.name,
        cwd=directory,
    )  # fmt: skip
    return pki
