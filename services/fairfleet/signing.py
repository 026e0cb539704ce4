"""Ed25519 signatures on site messages (updates and statistics).

The signed bytes are the message's canonical JSON with ``signature`` blanked; the message
already carries ``payload_sha256`` of its tensor payload, so the signature covers the weights.
Keys are raw 32-byte Ed25519 keys, hex-encoded in config files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fairfleet.errors import ConfigError
from fairfleet.messages import Message

M = TypeVar("M", bound=Message)


def generate_keypair() -> tuple[str, str]:
    """(private_hex, public_hex) of a fresh Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    return private, public


def key_id(public_hex: str) -> str:
    """Short stable id of a public key (first 16 hex of its sha256)."""
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:16]


def load_private(hex_or_path: str) -> Ed25519PrivateKey:
    """A private key from a file holding its hex, or from the hex itself.

    ConfigError says "not found" / "not readable" with the file's full path; a key given
    inline is never echoed (it is a secret)."""
    path = Path(hex_or_path).expanduser()
    stripped = hex_or_path.strip()
    # 64 characters, no folder, no such file: meant as an inline key (never echoed back)
    inline = len(stripped) == 64 and not any(c in stripped for c in "/\\.") and not path.exists()
    if inline:
        text, source = hex_or_path.strip(), "the inline private key"
    else:
        try:
            text, source = path.read_text().strip(), f"private key file {path.resolve()}"
        except FileNotFoundError as exc:
            raise ConfigError(f"Private key file not found: {path.resolve()}") from exc
        except PermissionError as exc:
            raise ConfigError(
                f"Private key file not readable by this user (uid {os.getuid()}): {path.resolve()}"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"Cannot read private key file {path.resolve()}: {exc.strerror}") from exc
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except ValueError as exc:
        raise ConfigError(f"{source} does not hold a hex Ed25519 private key (64 hex digits)") from exc


def load_public(public_hex: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError as exc:
        raise ConfigError(f"Not a hex Ed25519 public key: '{public_hex}'") from exc


def _signed_bytes(msg: Message) -> bytes:
    return msg.model_copy(update={"signature": ""}).model_dump_json().encode()


def sign(msg: M, private_key: Ed25519PrivateKey) -> M:
    """A copy of ``msg`` with ``key_id`` and ``signature`` set."""
    public_hex = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    unsigned = msg.model_copy(update={"key_id": key_id(public_hex), "signature": ""})
    signature = private_key.sign(_signed_bytes(unsigned)).hex()
    return unsigned.model_copy(update={"signature": signature})


def verify(msg: Message, public_keys: dict[str, str]) -> str | None:
    """None if ``msg`` is signed by the site's registered key, else the reason it is not.

    ``public_keys`` maps site id -> public key hex.
    """
    site = getattr(msg, "site", None)
    signature = getattr(msg, "signature", "")
    if site not in public_keys:
        return f"unknown site '{site}'"
    if not signature:
        return "unsigned message"
    public_hex = public_keys[site]
    if getattr(msg, "key_id", "") != key_id(public_hex):
        return f"key id '{getattr(msg, 'key_id', '')}' is not the registered key of '{site}'"
    try:
        load_public(public_hex).verify(bytes.fromhex(signature), _signed_bytes(msg))
    except (InvalidSignature, ValueError):
        return "bad signature"
    return None
