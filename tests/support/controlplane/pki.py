"""The control plane's keys and certificates, made with openssl for one test session.

One CA signs the API server's serving certificate, the aggregator's front-proxy client
certificate and the test metrics server's serving certificate; the service-account key pair
signs ServiceAccount tokens. Everything lives in the session's directory and goes with it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
DAYS = "2"  # one test session


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: KeyPair

    def issue(self, name: str, common_name: str, *, ips: tuple[str, ...] = ()) -> KeyPair:
        """A certificate for ``common_name`` (server and client use), with IP SANs."""
        pair = KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        extensions = self.directory / f"{name}.ext"
        sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{common_name}"]
        extensions.write_text(
            f"subjectAltName={','.join(sans)}\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
        )
        _openssl(
            "req", *CURVE, "-nodes", "-keyout", pair.key.name, "-out", f"{name}.csr",
            "-subj", f"/CN={common_name}", cwd=self.directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", self.ca.cert.name,
            "-CAkey", self.ca.key.name, "-CAcreateserial", "-days", DAYS,
            "-extfile", extensions.name, "-out", pair.cert.name, cwd=self.directory,
        )  # fmt: skip
        return pair


def new_pki(directory: Path) -> Pki:
    """A fresh CA in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = KeyPair(directory / "ca.crt", directory / "ca.key")
    _openssl(
        "req", "-x509", *CURVE, "-nodes", "-keyout", ca.key.name, "-out", ca.cert.name,
        "-days", DAYS, "-subj", "/CN=waolb-test-ca", cwd=directory,
    )  # fmt: skip
    return Pki(directory, ca)


def service_account_keys(directory: Path) -> KeyPair:
    """The key pair that signs and verifies ServiceAccount tokens (``cert`` is the public key)."""
    pair = KeyPair(directory / "sa.pub", directory / "sa.key")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", pair.key.name,
             cwd=directory)  # fmt: skip
    _openssl("ec", "-in", pair.key.name, "-pubout", "-out", pair.cert.name, cwd=directory)
    return pair
