"""Blob adapter: encrypted record content, content-addressed by SHA-256, in a directory."""

from rekam.blobs._directory import TEMP_PREFIX, DirectoryBlobStore

__all__ = ["TEMP_PREFIX", "DirectoryBlobStore"]
