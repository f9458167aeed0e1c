"""Public-key encryption of segment files: X25519 + HKDF-SHA256 + AES-256-GCM.

The writing machine holds only the recipient's public key. Each segment file gets a fresh
ephemeral X25519 key pair; the file key is HKDF-SHA256 over the shared secret, with the two
public keys as salt, and the ephemeral private key is forgotten at once, so the writer cannot
read back what it wrote. Every block is sealed with AES-256-GCM under that key, its 96-bit
nonce being the block's number in the file (never reused under one key), its header as
associated data, so blocks cannot be moved, reordered between files or altered unnoticed.

Key files (``ashmem log keygen --out NAME``): ``NAME.key`` is the private key (PKCS#8 PEM,
mode 0600), ``NAME.pub`` the public key (SubjectPublicKeyInfo PEM).

Needs the ``cryptography`` package: ``pip install 'ashmem[logs]'``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ._errors import KeyFileError

__all__ = ["Opener", "Sealer", "generate_keys", "key_id", "load_private", "load_public"]

_INFO = b"ashmem.logd segment v1"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import x25519
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError as exc:
        raise ImportError(
            "encrypted logs need the 'cryptography' package: pip install 'ashmem[logs]'"
        ) from exc
    return hashes, serialization, x25519, AESGCM, HKDF


def key_id(public_raw: bytes) -> bytes:
    """16 bytes naming a public key (written in the file, to tell a wrong key from damage)."""
    return hashlib.sha256(public_raw).digest()[:16]


def generate_keys(name: str | os.PathLike[str]) -> tuple[str, str]:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub``; return both paths.

    Refuses to overwrite an existing file (``FileExistsError``).
    """
    _, serialization, x25519, _, _ = _crypto()
    private = x25519.X25519PrivateKey.generate()
    base = os.fspath(name)
    key_path, pub_path = base + ".key", base + ".pub"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(pub)
    return key_path, pub_path


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16)
    except OSError as exc:
        raise KeyFileError(
            f"cannot read {what} key file {os.fspath(path)}: {exc.strerror}"
        ) from None


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The raw 32-byte X25519 public key in a ``.pub`` file."""
    _, serialization, x25519, _, _ = _crypto()
    data = _read(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{os.fspath(path)} is not a PEM public key") from None
    if not isinstance(key, x25519.X25519PublicKey):
        raise KeyFileError(f"{os.fspath(path)} is not an X25519 public key (ashmem log keygen)")
    return bytes(key.public_bytes_raw())


def load_private(path: str | os.PathLike[str]) -> Any:
    """The X25519 private key in a ``.key`` file."""
    _, serialization, x25519, _, _ = _crypto()
    data = _read(path, "private")
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{os.fspath(path)} is not an unencrypted PEM private key") from None
    if not isinstance(key, x25519.X25519PrivateKey):
        raise KeyFileError(f"{os.fspath(path)} is not an X25519 private key (ashmem log keygen)")
    return key


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    hashes, _, _, _, hkdf = _crypto()
    return bytes(
        hkdf(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_INFO)
        .derive(shared)
    )  # fmt: skip


class Sealer:
    """Encrypts the blocks of one segment file to ``recipient_pub`` (32 raw bytes)."""

    def __init__(self, recipient_pub: bytes) -> None:
        _, _, x25519, aesgcm, _ = _crypto()
        ephemeral = x25519.X25519PrivateKey.generate()
        self.ephemeral_pub = bytes(ephemeral.public_key().public_bytes_raw())
        shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(recipient_pub))
        self.key_id = key_id(recipient_pub)
        self._aead = aesgcm(_derive(shared, self.ephemeral_pub, recipient_pub))

    def seal(self, number: int, data: bytes, aad: bytes) -> bytes:
        return bytes(self._aead.encrypt(number.to_bytes(12, "little"), data, aad))


class Opener:
    """Decrypts the blocks of one segment file with the recipient's private key."""

    def __init__(self, private: Any, ephemeral_pub: bytes, file_key_id: bytes) -> None:
        _, _serialization, x25519, aesgcm, _ = _crypto()
        recipient_pub = bytes(private.public_key().public_bytes_raw())
        if key_id(recipient_pub) != file_key_id:
            raise KeyFileError("the log was encrypted to another key")
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(ephemeral_pub))
        self._aead = aesgcm(_derive(shared, ephemeral_pub, recipient_pub))

    def open(self, number: int, data: bytes, aad: bytes) -> bytes:
        """Plain bytes; ``ValueError`` if the block was altered."""
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self._aead.decrypt(number.to_bytes(12, "little"), data, aad))
        except InvalidTag:
            raise ValueError("encrypted block fails authentication") from None
