"""Blob adapter: encrypted record content, content-addressed by SHA-256, in one SQLite file."""

from rekam.blobs._sqlite import FORMAT, BlobStoreFormatError, SqliteBlobStore

__all__ = ["FORMAT", "BlobStoreFormatError", "SqliteBlobStore"]
