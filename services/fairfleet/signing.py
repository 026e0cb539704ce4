"""Ed25519 signatures on every control message: who may sign what, signing and verifying.

The signed bytes are the message's canonical JSON with ``signature`` blanked; a message that
carries weights has ``payload_sha256`` of its tensor payload (checked by the codec), so the
signature covers the weights. Keys are raw 32-byte Ed25519 keys, hex-encoded in config files.

Principals (docs/security.md): ``site:<id>`` (sites[].public_key), ``accountant``
(accountant.public_key) and ``aggregator:<model>`` (models[].aggregator.public_key).
:func:`signers_of` says which principals may sign a message; a :class:`Verifier` built from the
fleet config checks it (the bus Reader dead-letters what fails, fairfleet.bus.messaging), and a
:class:`Signer` is what a service's Publisher signs its control messages with.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fairfleet.errors import ConfigError
from fairfleet.messages import (
    FeatureStatistics,
    Message,
    ModelRelease,
    PartialAggregate,
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
    RoundAnnouncement,
    SignedMessage,
    SiteStatistics,
    SiteUpdate,
)

if TYPE_CHECKING:
    from fairfleet.config import FleetConfig

M = TypeVar("M", bound=Message)

ACCOUNTANT = "accountant"


def site_principal(site: str) -> str:
    return f"site:{site}"


def aggregator_principal(model_id: str) -> str:
    return f"aggregator:{model_id}"


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
            raise ConfigError(
                f"Cannot read private key file {path.resolve()}: {exc.strerror}"
            ) from exc
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except ValueError as exc:
        raise ConfigError(
            f"{source} does not hold a hex Ed25519 private key (64 hex digits)"
        ) from exc


def load_public(public_hex: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError as exc:
        raise ConfigError(f"Not a hex Ed25519 public key: '{public_hex}'") from exc


def public_hex_of(private_key: Ed25519PrivateKey) -> str:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _signed_bytes(msg: Message) -> bytes:
    return msg.model_copy(update={"signature": ""}).model_dump_json().encode()


def sign(msg: M, private_key: Ed25519PrivateKey) -> M:
    """A copy of ``msg`` with ``key_id`` and ``signature`` set."""
    unsigned = msg.model_copy(
        update={"key_id": key_id(public_hex_of(private_key)), "signature": ""}
    )
    signature = private_key.sign(_signed_bytes(unsigned)).hex()
    return unsigned.model_copy(update={"signature": signature})


def signers_of(msg: Message) -> tuple[str, ...]:
    """The principals allowed to sign ``msg``; () for a message that is not a control message.

    A site signs only messages that name it (its updates, statistics, feature statistics,
    reservation requests, commits and cancels); the accountant signs grants and denials and may write its own ledger
    events (an operator's cancel); the aggregator of a model signs its announcements and releases.
    """
    if isinstance(msg, SiteUpdate | SiteStatistics | FeatureStatistics | PrivacyReservationRequest):
        return (site_principal(msg.site),)
    if isinstance(msg, PrivacyEventMessage):
        return (site_principal(msg.site), ACCOUNTANT)
    if isinstance(msg, PrivacyGrant):
        return (ACCOUNTANT,)
    if isinstance(msg, RoundAnnouncement | ModelRelease | PartialAggregate):
        return (aggregator_principal(msg.model_id),)
    return ()


@dataclass(frozen=True)
class Problem:
    """Why a message is not accepted: ``reason`` is the dead-letter label, ``detail`` the text."""

    reason: str  # unsigned | unknown_signer | bad_signature
    detail: str


class Verifier:
    """Checks that a control message is signed by a principal allowed to sign it.

    ``keys`` maps principal -> public key hex. A principal with no key cannot sign anything
    (fail closed): its messages are ``unknown_signer``.
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        previous: Mapping[str, Sequence[str]] | None = None,
        ledger_only: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.keys = {p: k.lower() for p, k in keys.items()}
        # key id -> (principal, public key): the current keys, plus retired keys still accepted
        # during a rotation (docs/operations.md, "Rotate the accountant's or an aggregator's key")
        self._by_key_id = {key_id(k): (p, k) for p, k in self.keys.items()}
        for p, olds in (previous or {}).items():
            for k in olds:
                self._by_key_id.setdefault(key_id(k.lower()), (p, k.lower()))
        # retired site keys: valid on ledger records only. The ledger must count every record a
        # site really signed, however late it is read (a commit consumed after the accountant
        # learned the new key, or a rebuild from privacy.events); refusing one would under-count.
        # An update signed with a retired key is still refused: it would steer the model.
        self._ledger_by_key_id = dict(self._by_key_id)
        for p, olds in (ledger_only or {}).items():
            for k in olds:
                self._ledger_by_key_id.setdefault(key_id(k.lower()), (p, k.lower()))

    @classmethod
    def from_config(cls, config: FleetConfig) -> Verifier:
        keys = {site_principal(s.id): s.public_key for s in config.sites}
        ledger_only = {site_principal(s.id): list(s.previous_public_keys) for s in config.sites}
        previous: dict[str, list[str]] = {}
        if config.accountant.public_key:
            keys[ACCOUNTANT] = config.accountant.public_key
            previous[ACCOUNTANT] = list(config.accountant.previous_public_keys)
        for m in config.models:
            if m.aggregator is not None:
                keys[aggregator_principal(m.id)] = m.aggregator.public_key
                previous[aggregator_principal(m.id)] = list(m.aggregator.previous_public_keys)
        return cls(keys, previous, ledger_only)

    def check(self, msg: Message) -> Problem | None:
        """None if ``msg`` is not a control message or is signed by one of its allowed signers."""
        allowed = signers_of(msg)
        if not allowed:
            return None
        what = f"{msg.TYPE} {msg.message_id}"
        assert isinstance(msg, SignedMessage)
        if not msg.signature:
            return Problem(
                "unsigned", f"{what} is unsigned; it must be signed by {' or '.join(allowed)}"
            )
        known = [p for p in allowed if p in self.keys]
        if not known:
            return Problem(
                "unknown_signer", f"{what}: no public key configured for {' or '.join(allowed)}"
            )
        by_key_id = (
            self._ledger_by_key_id
            if isinstance(msg, PrivacyReservationRequest | PrivacyEventMessage)
            else self._by_key_id
        )
        signer, public_hex = by_key_id.get(msg.key_id, ("", ""))
        if signer not in known:
            by = f"the key of '{signer}'" if signer else f"unknown key id '{msg.key_id[:32]}'"
            return Problem(
                "bad_signature",
                f"{what} is signed by {by}; only {' or '.join(allowed)} may sign it",
            )
        try:
            load_public(public_hex).verify(bytes.fromhex(msg.signature), _signed_bytes(msg))
        except (InvalidSignature, ValueError):
            return Problem("bad_signature", f"{what}: the signature of '{signer}' does not verify")
        return None


def verify(msg: Message, public_keys: dict[str, str]) -> str | None:
    """None if ``msg`` is signed by the registered key of the site it names, else the reason.

    ``public_keys`` maps site id -> public key hex (the aggregator's update check).
    """
    site = getattr(msg, "site", None)
    if site not in public_keys:
        return f"unknown site '{site}'"
    problem = Verifier({site_principal(site): public_keys[site]}).check(msg)
    if problem is None and not signers_of(msg):
        return "not a site message"
    return None if problem is None else problem.detail


@dataclass(frozen=True)
class Signer:
    """A service's identity: signs every control message its Publisher sends."""

    principal: str
    key: Ed25519PrivateKey

    def __call__(self, msg: M) -> M:
        if not isinstance(msg, SignedMessage) or not signers_of(msg):
            return msg
        return sign(msg, self.key)

    @classmethod
    def from_file(
        cls, principal: str, config: FleetConfig, key_file: str | None, field: str
    ) -> Signer:
        """The signer of ``principal`` from its configured private key file (ConfigError naming
        ``field`` when none is configured)."""
        if not key_file:
            raise ConfigError(
                f"{field} is not set: '{principal}' needs its Ed25519 private key to sign its "
                "messages (generate one with `fairfleet site keygen --out FILE`; docs/security.md)"
            )
        return cls(principal, load_private(str(config.resolve_path(key_file))))


def accountant_signer(config: FleetConfig) -> Signer:
    return Signer.from_file(
        ACCOUNTANT, config, config.accountant.private_key_file, "accountant.private_key_file"
    )


def aggregator_signer(config: FleetConfig, model_id: str) -> Signer:
    ident = config.model(model_id).aggregator
    return Signer.from_file(
        aggregator_principal(model_id),
        config,
        ident.private_key_file if ident else None,
        f"models[{model_id}].aggregator.private_key_file",
    )


def write_private_key(path: Path, private_hex: str) -> Path:
    """Write a private key file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(private_hex + "\n")
    return path


def add_service_identities(data: dict[str, Any], key_dir: Path) -> dict[str, Any]:
    """``data`` (a fleet config mapping) with fresh identities for the accountant and every
    model's aggregator that has none, private keys written under ``key_dir`` (demo and tests)."""
    accountant = dict(data.get("accountant") or {})
    if not accountant.get("public_key"):
        private, public = generate_keypair()
        accountant["public_key"] = public
        accountant["private_key_file"] = str(write_private_key(key_dir / "accountant.key", private))
    models = []
    for model in data.get("models") or []:
        model = dict(model)
        if not model.get("aggregator"):
            private, public = generate_keypair()
            path = write_private_key(key_dir / f"aggregator-{model['id']}.key", private)
            model["aggregator"] = {"public_key": public, "private_key_file": str(path)}
        models.append(model)
    return {**data, "accountant": accountant, "models": models}


H_SIGNATURE = "ff-signature"
H_KEY_ID = "ff-key-id"


def _blob_bytes(kind: str, owner: str, value: bytes | memoryview) -> bytes:
    return f"fairfleet.{kind}\0{owner}\0".encode() + hashlib.sha256(value).digest()


def blob_signature_headers(
    kind: str, owner: str, value: bytes | memoryview, private_key: Ed25519PrivateKey
) -> dict[str, bytes]:
    """Record headers signing a binary value that is not a message (an aggregator checkpoint):
    Ed25519 over its kind, owner and sha256."""
    return {
        H_SIGNATURE: private_key.sign(_blob_bytes(kind, owner, value)).hex().encode(),
        H_KEY_ID: key_id(public_hex_of(private_key)).encode(),
    }


def blob_signed_by(
    kind: str,
    owner: str,
    value: bytes | memoryview,
    headers: Mapping[str, bytes],
    public_keys: Sequence[str],
) -> bool:
    """Do ``headers`` carry a valid signature of ``value`` by one of ``public_keys``?"""
    try:
        signature = bytes.fromhex(headers.get(H_SIGNATURE, b"").decode())
        kid = headers.get(H_KEY_ID, b"").decode()
    except (ValueError, UnicodeDecodeError):
        return False
    for public in public_keys:
        if key_id(public.lower()) != kid:
            continue
        try:
            load_public(public).verify(signature, _blob_bytes(kind, owner, value))
            return True
        except (InvalidSignature, ValueError):
            return False
    return False


def aggregator_public_keys(config: FleetConfig, model_id: str) -> list[str]:
    """The keys an aggregator's own records may be signed with (current, then retired)."""
    ident = config.model(model_id).aggregator
    return [] if ident is None else [ident.public_key, *ident.previous_public_keys]
