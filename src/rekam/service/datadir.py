"""The data folder of a node: its configuration, genesis, keystores and local directory.

Layout::

    DIR/rekam.json        node configuration (network id, store URL, local organisations)
    DIR/genesis.json      the network's genesis document (canonical JSON)
    DIR/chain.db          SQLite chain and state (embedded default)
    DIR/content.db        encrypted record content, content-addressed (SQLite; folders of
                          the first format kept it in DIR/blobs/, moved here on opening)
    DIR/keys/             encrypted keystores (Argon2id + AES-256-GCM), one per principal
    DIR/secrets/          passphrase files of the node's own organisation keys (mode 0600)
    DIR/directory.json    display labels of organisations and members (never patients)
    DIR/rekam.lock        held while a process writes to the folder
    DIR/index/            keyed patient search index (HMAC tags only; key in DIR/secrets/)
    DIR/api/              API tokens (sealed); DIR/portal-totp.json: sealed TOTP secrets
    DIR/portal-guard.db   login lockout counts and TOTP replay state (keyed tags only)
    DIR/portal-lab-results.json   which lab order a result answers (record ids only)
    DIR/network.json      present on a node of an etcd-ordered network (endpoints, peers)
    DIR/last-verify.json  time and outcome of the latest full verification (no content)

The chain never sees the directory: staff names are local display data. Patient names and
identifiers exist only inside encrypted record content, and on the node as keyed tags.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rekam._files import fsync_dir
from rekam.crypto import KdfParams, new_identity_keystore
from rekam.ledger.tx import id_kind

CONFIG_FORMAT = "rekam-node/1"


NETWORK_FILE = "network.json"
LAST_VERIFY_FILE = "last-verify.json"


class DataDirError(Exception):
    """The data folder is missing, locked, or not a Rekam data folder."""


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class DataDir:
    """Paths and small files of one node's data folder."""

    root: Path

    @property
    def config_path(self) -> Path:
        """The node configuration file."""
        return self.root / "rekam.json"

    @property
    def genesis_path(self) -> Path:
        """The genesis document."""
        return self.root / "genesis.json"

    @property
    def content_path(self) -> Path:
        """The SQLite file holding encrypted record content."""
        return self.root / "content.db"

    @property
    def legacy_blob_dir(self) -> Path:
        """Where data folders of the first format kept content, a file per blob."""
        return self.root / "blobs"

    def exists(self) -> bool:
        """True when the folder holds a node configuration."""
        return self.config_path.is_file()

    @property
    def in_network(self) -> bool:
        """True for a node of an etcd-ordered network (it holds only content it may read)."""
        return (self.root / NETWORK_FILE).is_file()

    def record_verification(self, outcome: dict[str, Any]) -> None:
        """Keep the latest full verification's outcome (time, ok, one-line summary)."""
        _atomic_write(self.root / LAST_VERIFY_FILE, json.dumps(outcome, sort_keys=True) + "\n")

    def last_verification(self) -> dict[str, Any] | None:
        """The latest recorded verification outcome, or None when none was recorded."""
        try:
            doc: dict[str, Any] = json.loads((self.root / LAST_VERIFY_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return doc

    def config(self) -> dict[str, Any]:
        """The parsed node configuration."""
        if not self.exists():
            raise DataDirError(
                f"{self.root} is not a Rekam data folder (no rekam.json); run rekam init"
            )
        try:
            config: dict[str, Any] = json.loads(self.config_path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise DataDirError(f"cannot read {self.config_path}: {type(exc).__name__}") from None
        if config.get("format") != CONFIG_FORMAT:
            raise DataDirError(
                f"{self.config_path} has format {config.get('format')!r}; expected {CONFIG_FORMAT}"
            )
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the node configuration atomically."""
        _atomic_write(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def store_url(self) -> str:
        """The SQLAlchemy URL of the chain store (relative SQLite paths resolve in the folder)."""
        url = str(self.config().get("store", "sqlite:///chain.db"))
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            return prefix + str((self.root / url[len(prefix) :]).resolve())
        return url

    def keystore_path(self, principal: str) -> Path:
        """Where a principal's keystore lives."""
        folder = {"org": "orgs", "member": "members", "patient": "patients"}.get(
            str(id_kind(principal))
        )
        if folder is None:
            raise DataDirError("not an organisation, member or patient id")
        return self.root / "keys" / folder / f"{principal}.json"

    def keystore_uri(self, principal: str) -> str:
        """The signer reference of a principal's keystore, relative to the folder."""
        return "keystore:" + str(self.keystore_path(principal).relative_to(self.root))

    def kdf_params(self) -> KdfParams:
        """Keystore KDF cost for new keystores (``fast`` only for tests and benchmarks)."""
        profile = self.config().get("kdf", "standard") if self.exists() else "standard"
        return KdfParams.fast() if profile == "fast" else KdfParams.default()

    def create_keystore(
        self, principal: str, passphrase: str, label: str = ""
    ) -> tuple[bytes, bytes]:
        """Generate a principal's signing and encryption keys into an encrypted keystore."""
        path = self.keystore_path(principal)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            raise DataDirError(f"a keystore for {principal} exists already")
        return new_identity_keystore(path, passphrase, self.kdf_params(), label=label)

    def write_secret(self, name: str, value: str) -> Path:
        """Store a passphrase file readable only by the owner; returns its path."""
        folder = self.root / "secrets"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{name}.pass"
        _atomic_write(path, value, mode=0o600)
        return path

    # -- the local directory of display labels ------------------------------------------------

    def labels(self) -> dict[str, str]:
        """Display labels of organisations and members known to this node."""
        path = self.root / "directory.json"
        if not path.is_file():
            return {}
        labels: dict[str, str] = json.loads(path.read_text("utf-8"))
        return labels

    def set_label(self, principal: str, label: str) -> None:
        """Remember a display label for an organisation or member (never a patient)."""
        if id_kind(principal) not in ("org", "member"):
            raise DataDirError("labels are kept for organisations and members only")
        labels = self.labels()
        labels[principal] = label
        _atomic_write(
            self.root / "directory.json", json.dumps(labels, indent=2, sort_keys=True) + "\n"
        )


class FolderLock:
    """An exclusive advisory lock on the data folder, so one process writes at a time."""

    def __init__(self, root: Path, wait: bool = True) -> None:
        self._path = root / "rekam.lock"
        self._wait = wait
        self._handle: TextIO | None = None

    def __enter__(self) -> FolderLock:
        self._handle = open(self._path, "a", encoding="utf-8")
        flags = fcntl.LOCK_EX if self._wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(self._handle.fileno(), flags)
        except BlockingIOError:
            self._handle.close()
            raise DataDirError(f"{self._path.parent} is in use by another Rekam process") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
