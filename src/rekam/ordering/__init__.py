"""Ordering adapters: the solo in-process orderer (embedded default)."""
