"""A throwaway certificate authority for the TLS tests (the `cryptography` package, dev extra).

``make_ca(folder, hosts)`` writes ca.pem, server.pem/server-key.pem (SANs: every host given, IP or DNS name)
and client.pem/client-key.pem, all signed by the CA, valid for one day; plus other-ca.pem, an unrelated CA
whose signature the servers must refuse.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Dict, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _ca(common_name: str):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, common_name: str, hosts: Sequence[str], usages):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_ca(folder, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> Dict[str, Path]:
    """Write the CA, a server pair (SANs ``hosts``, usable as a client too) and a client pair; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("nercc test CA")
    # the server pair is also a client pair: the launcher's readiness probe presents it under mutual TLS
    server_key, server_cert = _leaf(ca_key, ca_cert, "nercc server", hosts,
                                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    client_key, client_cert = _leaf(ca_key, ca_cert, "nercc client", [], [ExtendedKeyUsageOID.CLIENT_AUTH])
    other_key, other_cert = _ca("some other CA")
    stray_key, stray_cert = _leaf(other_key, other_cert, "stray client", [], [ExtendedKeyUsageOID.CLIENT_AUTH])
    paths = {name: folder / f"{name}.pem" for name in
             ("ca", "server", "server-key", "client", "client-key", "other-ca", "stray", "stray-key")}
    pem = serialization.Encoding.PEM
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["server"].write_bytes(server_cert.public_bytes(pem))
    _write_key(server_key, paths["server-key"])
    paths["client"].write_bytes(client_cert.public_bytes(pem))
    _write_key(client_key, paths["client-key"])
    paths["other-ca"].write_bytes(other_cert.public_bytes(pem))
    paths["stray"].write_bytes(stray_cert.public_bytes(pem))
    _write_key(stray_key, paths["stray-key"])
    return paths
