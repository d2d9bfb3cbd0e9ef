"""Rekam: a permissioned ledger for encrypted, consented and audited medical records."""

__version__ = "0.1.0"
