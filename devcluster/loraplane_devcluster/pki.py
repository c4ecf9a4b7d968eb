"""The dev cluster's certificates and keys, made with the ``openssl`` command line tool.

One CA signs everything: the API server's serving certificate, a client certificate per
identity (admin, controller-manager, scheduler, the API server's kubelet client) and whatever
the node agent asks for through :func:`issue_client_cert` / :func:`issue_serving_cert`. Files are
reused across ``up``/``down`` so that service-account tokens and stored objects stay valid; a
certificate close to expiry is reissued, and a missing CA reissues everything.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The first address of --service-cluster-ip-range: the ClusterIP of the `kubernetes` Service.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IP_ADDRESSES = ("127.0.0.1", KUBERNETES_SERVICE_IP)

CA_DAYS = 3650
LEAF_DAYS = 365
# A leaf certificate expiring within this many seconds is reissued on the next `up`.
REISSUE_BEFORE_S = 7 * 24 * 3600
RSA_BITS = 2048

# Our own minimal openssl config: the system openssl.cnf adds extensions of its own to `req -x509`,
# and -addext on top of those fails with "extension already exists" on OpenSSL 3.0.
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPki:
    """Every file the control plane's flags point at."""

    directory: Path
    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    apiserver_kubelet_client: KeyPair
    service_account_private_key: Path
    service_account_public_key: Path


class PkiError(RuntimeError):
    pass


def _openssl(*args: str) -> str:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PkiError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _new_private_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{RSA_BITS}", "-out", str(path))
    path.chmod(0o600)


def _subject(common_name: str, organizations: Sequence[str]) -> str:
    return "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"


def _config_file(directory: Path) -> Path:
    path = directory / "openssl.cnf"
    if not path.exists() or path.read_text() != _OPENSSL_CONFIG:
        path.write_text(_OPENSSL_CONFIG)
    return path


def _expires_soon(cert: Path) -> bool:
    result = subprocess.run(
        ["openssl", "x509", "-checkend", str(REISSUE_BEFORE_S), "-noout", "-in", str(cert)],
        capture_output=True,
        check=False,
    )
    return result.returncode != 0


def _usable(pair: KeyPair) -> bool:
    return pair.cert.exists() and pair.key.exists() and not _expires_soon(pair.cert)


def _new_ca(directory: Path) -> KeyPair:
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    _new_private_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-subj", "/CN=loraplane-devcluster-ca",
        "-days", str(CA_DAYS), "-sha256", "-config", str(_config_file(directory)), "-extensions", "ca",
        "-out", str(pair.cert),
    )  # fmt: skip
    return pair


def _issue(
    directory: Path,
    name: str,
    common_name: str,
    organizations: Sequence[str],
    *,
    extended_usage: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> KeyPair:
    ca = KeyPair(directory / "ca.crt", directory / "ca.key")
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_private_key(pair.key)
    extensions = [
        "[leaf]",
        "basicConstraints = critical,CA:FALSE",
        "keyUsage = critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage = {extended_usage}",
        "authorityKeyIdentifier = keyid",
    ]
    alt_names = [f"DNS:{dns}" for dns in dns_names] + [f"IP:{ip}" for ip in ip_addresses]
    if alt_names:
        extensions.append(f"subjectAltName = {','.join(alt_names)}")
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        csr = Path(scratch) / "request.csr"
        extfile = Path(scratch) / "extensions.cnf"
        extfile.write_text("\n".join(extensions) + "\n")
        _openssl(
            "req", "-new", "-key", str(pair.key), "-subj", _subject(common_name, organizations),
            "-config", str(_config_file(directory)), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(LEAF_DAYS), "-sha256",
            "-extfile", str(extfile), "-extensions", "leaf", "-out", str(pair.cert),
        )  # fmt: skip
    return pair


def issue_client_cert(
    pki_dir: Path, name: str, common_name: str, organizations: Sequence[str] = (), *, reuse: bool = True
) -> KeyPair:
    """A client certificate for user ``common_name`` in groups ``organizations``.

    Kubernetes reads the user from CN and the groups from O, so a node identity is
    ``common_name="system:node:NAME", organizations=["system:nodes"]``.
    """
    pair = KeyPair(pki_dir / f"{name}.crt", pki_dir / f"{name}.key")
    if reuse and _usable(pair):
        return pair
    return _issue(pki_dir, name, common_name, organizations, extended_usage="clientAuth")


def issue_serving_cert(
    pki_dir: Path,
    name: str,
    common_name: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    *,
    reuse: bool = True,
) -> KeyPair:
    """A server certificate signed by the cluster CA (e.g. for a kubelet endpoint on 127.0.0.N)."""
    pair = KeyPair(pki_dir / f"{name}.crt", pki_dir / f"{name}.key")
    if reuse and _usable(pair):
        return pair
    return _issue(
        pki_dir,
        name,
        common_name,
        (),
        extended_usage="serverAuth",
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )


def cluster_pki(pki_dir: Path) -> ClusterPki:
    """The paths of an existing run directory's PKI, without creating or reissuing anything."""

    def pair(name: str) -> KeyPair:
        return KeyPair(pki_dir / f"{name}.crt", pki_dir / f"{name}.key")

    return ClusterPki(
        directory=pki_dir,
        ca=pair("ca"),
        apiserver=pair("apiserver"),
        admin=pair("admin"),
        controller_manager=pair("controller-manager"),
        scheduler=pair("scheduler"),
        apiserver_kubelet_client=pair("apiserver-kubelet-client"),
        service_account_private_key=pki_dir / "service-account.key",
        service_account_public_key=pki_dir / "service-account.pub",
    )


def ensure_cluster_pki(pki_dir: Path) -> ClusterPki:
    """Make (or reuse) every certificate and key the control plane needs."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    ca = KeyPair(pki_dir / "ca.crt", pki_dir / "ca.key")
    reuse = ca.cert.exists() and ca.key.exists() and not _expires_soon(ca.cert)
    if not reuse:
        ca = _new_ca(pki_dir)

    sa_private = pki_dir / "service-account.key"
    sa_public = pki_dir / "service-account.pub"
    if not (reuse and sa_private.exists() and sa_public.exists()):
        _new_private_key(sa_private)
        _openssl("pkey", "-in", str(sa_private), "-pubout", "-out", str(sa_public))

    return ClusterPki(
        directory=pki_dir,
        ca=ca,
        apiserver=issue_serving_cert(
            pki_dir, "apiserver", "kube-apiserver", APISERVER_DNS_NAMES, APISERVER_IP_ADDRESSES, reuse=reuse
        ),
        admin=issue_client_cert(pki_dir, "admin", "loraplane-admin", ["system:masters"], reuse=reuse),
        controller_manager=issue_client_cert(
            pki_dir, "controller-manager", "system:kube-controller-manager", reuse=reuse
        ),
        scheduler=issue_client_cert(pki_dir, "scheduler", "system:kube-scheduler", reuse=reuse),
        apiserver_kubelet_client=issue_client_cert(
            pki_dir,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            ["system:masters"],
            reuse=reuse,
        ),
        service_account_private_key=sa_private,
        service_account_public_key=sa_public,
    )
