"""Test PKI: a CA, a server certificate (localhost and 127.0.0.1), a client certificate, and a
stranger's certificate from a CA nobody trusts; PEM files in a folder, by name."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path


def make_certificates(folder: Path) -> dict[str, Path]:
    """ca, other_ca, server, server_key, client, client_key, client_encrypted_key (password
    "password"), stranger, stranger_key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(data)

    def pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             ca: bool, san: list[x509.GeneralName] | None = None) -> bytes:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    authorities = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "other_ca")}
    for name, key in authorities.items():  # the one the tests trust, and one nobody does
        write(name, cert(name, key, name, key, True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    write("server_key", pem_key(server_key))
    write("server", cert("localhost", server_key, "ca", authorities["ca"], False,
                         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    for client, issuer in (("client", "ca"), ("stranger", "other_ca")):
        key = ec.generate_private_key(ec.SECP256R1())
        write(f"{client}_key", pem_key(key))
        write(client, cert(client, key, issuer, authorities[issuer], False))
        if client == "client":
            write("client_encrypted_key", pem_key(key, b"password"))
    return files
