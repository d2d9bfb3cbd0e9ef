"""Rekam's cryptography: the only package that touches keys, built on vetted libraries.

* Signatures: Ed25519 via PyNaCl (libsodium). ``verify_signature`` is the single verification
  rule every node applies; ``verify_many`` applies it to batches on a thread pool.
* Records: AES-256-GCM under a fresh key per record (``seal`` / ``open_sealed``).
* Key wrapping: HPKE (RFC 9180, base mode) with X25519 or the ML-KEM-768 + X25519 hybrid KEM
  (``wrap_key`` / ``unwrap_key``); key bytes carry a suite byte.
* Keys at rest: Argon2id + AES-256-GCM keystores (``write_keystore`` / ``read_keystore``).
* Signer references: ``load_identity("keystore:...")`` gives signing and unwrapping
  capabilities without handing private key bytes to domain code.

Every decryption failure raises the same opaque ``DecryptionError``.
"""

from rekam.crypto._aead import open_sealed, seal
from rekam.crypto._errors import CryptoError, DecryptionError, KeyFormatError, SignerError
from rekam.crypto._hpke import (
    SUITE_HYBRID,
    SUITE_X25519,
    encryption_public_key,
    generate_encryption_key,
    unwrap_key,
    wrap_key,
)
from rekam.crypto._keystore import KdfParams, change_passphrase, read_keystore, write_keystore
from rekam.crypto._signers import Identity, load_identity, new_identity_keystore
from rekam.crypto._signing import (
    Ed25519Signer,
    Signer,
    generate_signing_seed,
    signing_public_key,
    verify_many,
    verify_signature,
)

__all__ = [
    "SUITE_HYBRID",
    "SUITE_X25519",
    "CryptoError",
    "DecryptionError",
    "Ed25519Signer",
    "Identity",
    "KdfParams",
    "KeyFormatError",
    "Signer",
    "SignerError",
    "change_passphrase",
    "encryption_public_key",
    "generate_encryption_key",
    "generate_signing_seed",
    "load_identity",
    "new_identity_keystore",
    "open_sealed",
    "read_keystore",
    "seal",
    "signing_public_key",
    "unwrap_key",
    "verify_many",
    "verify_signature",
    "wrap_key",
    "write_keystore",
]
