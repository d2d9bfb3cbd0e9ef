"""Merkle trees as specified in RFC 9162 (Certificate Transparency v2), section 2.1.

Hashes are raw 32-byte SHA-256 digests:

- a leaf hashes as ``SHA-256(0x00 || data)``,
- an interior node as ``SHA-256(0x01 || left || right)``,
- the empty tree's root is ``SHA-256("")``.

The tree over ``n`` leaves splits at ``k``, the largest power of two smaller than ``n``,
so every left subtree is complete and only the right edge can be ragged.

The free functions take a list of leaf hashes and cost O(n) per call; ``MerkleLog``
keeps the hashes of complete subtrees so that roots and proofs over a large log cost
O(log² n) hash look-ups. Everything is pure: no I/O, no global state.

Every bad proof and every malformed input (wrong hash length, non-bytes, negative or
out-of-range sizes) raises ``ProofError``.
"""

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "MerkleLog",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

_HASH_SIZE = 32
_EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not verify, or the inputs to build or check one are malformed."""


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 hash of one leaf: SHA-256(0x00 || data)."""
    if not isinstance(data, bytes):
        raise ProofError(f"leaf data must be bytes, got {type(data).__name__}")
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 hash of an interior node: SHA-256(0x01 || left || right)."""
    _check_hash(left, "left hash")
    _check_hash(right, "right hash")
    return _node(left, right)


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (MTH) of a list of leaf hashes, in O(n) without recursion.

    Level by level: adjacent pairs are hashed and an odd last node moves up unchanged. That
    is the RFC's split at the largest power of two (every left subtree complete, only the
    right edge ragged), without a ``MerkleLog``'s bookkeeping: every block header's root is
    computed this way, on the commit and verify paths.
    """
    level = list(_check_sequence(leaf_hashes, "leaf hashes"))
    for i, h in enumerate(level):
        if type(h) is not bytes or len(h) != _HASH_SIZE:
            _check_hash(h, f"leaf hash {i}")
    if not level:
        return _EMPTY_ROOT
    sha256 = hashlib.sha256
    while len(level) > 1:
        pairs = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            pairs.append(level[-1])
        level = pairs
    return bytes(level[0])


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (MTH) of a list of raw leaf data."""
    return root_from_leaf_hashes([leaf_hash(data) for data in _check_sequence(leaves, "leaves")])


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the audit path PATH(index, D[n]) of RFC 9162 section 2.1.3.1, deepest first."""
    return MerkleLog(_check_sequence(leaf_hashes, "leaf hashes")).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return PROOF(old_size, D[n]) of RFC 9162 section 2.1.4.1 (old_size in 1..n)."""
    return MerkleLog(_check_sequence(leaf_hashes, "leaf hashes")).consistency_proof(old_size)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` sits at ``index`` of the tree of ``tree_size`` with ``root``.

    Follows RFC 9162 section 2.1.3.2; raises ``ProofError`` if the proof does not verify.
    """
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    _check_int(index, "index")
    _check_int(tree_size, "tree size")
    path = _check_proof(proof)
    if not 0 <= index < tree_size:
        raise ProofError(f"index {index} out of range for tree size {tree_size}")
    expected = _inclusion_path_length(index, tree_size)
    if len(path) != expected:
        raise ProofError(f"proof has {len(path)} hashes, expected {expected}")

    # The length check stands in for the RFC's "sn is 0" checks (steps 4a and 5):
    # with exactly `expected` hashes, sn reaches 0 on the last one.
    fn, sn = index, tree_size - 1
    r = leaf_hash
    for p in path:
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if r != root:
        raise ProofError(f"root mismatch: expected {root.hex()}, computed {r.hex()}")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` with ``old_root`` is a prefix of the new tree.

    Follows RFC 9162 section 2.1.4.2; equal sizes need an empty proof and equal roots.
    Raises ``ProofError`` if the proof does not verify.
    """
    _check_int(old_size, "old size")
    _check_int(new_size, "new size")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    path = _check_proof(proof)
    if old_size < 1:
        raise ProofError(f"old size must be at least 1, got {old_size}")
    if old_size > new_size:
        raise ProofError(f"old size {old_size} exceeds new size {new_size}")
    expected = _consistency_path_length(old_size, new_size)
    if len(path) != expected:
        raise ProofError(f"proof has {len(path)} hashes, expected {expected}")
    if old_size == new_size:
        if old_root != new_root:
            raise ProofError(
                f"root mismatch for equal sizes: old root {old_root.hex()}, "
                f"new root {new_root.hex()}"
            )
        return

    # An old tree of power-of-two size is itself a subtree of the new one, so its root
    # is left out of the proof and is the starting point of both computations.
    if old_size & (old_size - 1) == 0:
        path = [old_root, *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    # As in verify_inclusion, the length check replaces the RFC's "sn is 0" checks.
    for c in path[1:]:
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if fr != old_root:
        raise ProofError(f"old root mismatch: expected {old_root.hex()}, computed {fr.hex()}")
    if sr != new_root:
        raise ProofError(f"new root mismatch: expected {new_root.hex()}, computed {sr.hex()}")


class MerkleLog:
    """An append-only list of leaf hashes with roots and proofs for any of its prefixes.

    ``_levels[h][i]`` is the hash of the complete subtree over leaves
    ``[i * 2**h, (i + 1) * 2**h)``; these never change once the log has grown past
    them, so the hash of every subtree the RFC recursion visits is a handful of
    look-ups away.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Start a log holding ``leaf_hashes``, in order."""
        if not isinstance(leaf_hashes, Iterable):
            raise ProofError(f"leaf hashes must be iterable, got {type(leaf_hashes).__name__}")
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        """The number of leaves in the log."""
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and return its index."""
        index = self.size
        _check_hash(leaf_hash, f"leaf hash {index}")
        self._levels[0].append(leaf_hash)
        height = 0
        while len(self._levels[height]) % 2 == 0:
            level = self._levels[height]
            if height + 1 == len(self._levels):
                self._levels.append([])
            self._levels[height + 1].append(_node(level[-2], level[-1]))
            height += 1
        return index

    def root(self, size: int | None = None) -> bytes:
        """Return the root of the first ``size`` leaves (default: the whole log)."""
        size = self._size_or_current(size, "size")
        return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return PATH(index, D[size]) for the first ``size`` leaves (default: all)."""
        size = self._size_or_current(size, "size")
        _check_int(index, "index")
        if not 0 <= index < size:
            raise ProofError(f"index {index} out of range for tree size {size}")
        path = []
        start, end = 0, size
        while end - start > 1:
            mid = start + _split(end - start)
            if index < mid:
                path.append(self._subtree(mid, end))
                end = mid
            else:
                path.append(self._subtree(start, mid))
                start = mid
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return PROOF(old_size, D[new_size]) (default new_size: the whole log)."""
        new_size = self._size_or_current(new_size, "new size")
        _check_int(old_size, "old size")
        if not 1 <= old_size <= new_size:
            raise ProofError(f"old size {old_size} out of range 1..{new_size}")
        # SUBPROOF(m, D[start:end], b) of RFC 9162 2.1.4.1, unrolled; `complete` is b.
        path = []
        start, end, complete = 0, new_size, True
        while end != old_size:
            mid = start + _split(end - start)
            if old_size <= mid:
                path.append(self._subtree(mid, end))
                end = mid
            else:
                path.append(self._subtree(start, mid))
                start, complete = mid, False
        if not complete:
            path.append(self._subtree(start, end))
        path.reverse()
        return path

    def _size_or_current(self, size: int | None, name: str) -> int:
        if size is None:
            return self.size
        _check_int(size, name)
        if not 0 <= size <= self.size:
            raise ProofError(f"{name} {size} out of range 0..{self.size}")
        return size

    def _subtree(self, start: int, end: int) -> bytes:
        """Return MTH(D[start:end]) for a range the RFC recursion can visit.

        Such a range starts at a multiple of the largest power of two not above its
        length, so it splits into complete, aligned subtrees whose sizes are the binary
        digits of its length, largest first; its hash folds them from the right.
        """
        if start == end:
            return _EMPTY_ROOT
        n = end - start
        result: bytes | None = None
        for height in range(n.bit_length()):
            if n >> height & 1:
                end -= 1 << height
                chunk = self._levels[height][end >> height]
                result = chunk if result is None else _node(chunk, result)
        assert result is not None
        return result


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Return the largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_path_length(index: int, size: int) -> int:
    """Return the number of hashes in PATH(index, D[size]).

    Below the highest bit where ``index`` and ``size - 1`` differ, the leaf lies in a
    complete subtree and every level has a sibling; above it, the leaf's ancestor is
    on the right edge and has a sibling only where it is a right child (a 1 bit).
    """
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_path_length(old_size: int, new_size: int) -> int:
    """Return the number of hashes in PROOF(old_size, D[new_size])."""
    if old_size == new_size:
        return 0
    # The proof is the audit path of the old tree's last complete subtree (of size
    # 2**level) inside the new tree, plus that subtree's hash unless it is the old root.
    level = (old_size & -old_size).bit_length() - 1
    length = _inclusion_path_length((old_size - 1) >> level, ((new_size - 1) >> level) + 1)
    return length if old_size == 1 << level else length + 1


def _check_hash(value: object, name: str) -> None:
    if not isinstance(value, bytes):
        raise ProofError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != _HASH_SIZE:
        raise ProofError(f"{name} must be {_HASH_SIZE} bytes, got {len(value)}")


def _check_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{name} must be an int, got {type(value).__name__}")


def _check_sequence(value: Sequence[bytes], name: str) -> Sequence[bytes]:
    if not isinstance(value, Sequence) or isinstance(value, (bytes, str)):
        raise ProofError(f"{name} must be a sequence of bytes, got {type(value).__name__}")
    return value


def _check_proof(proof: Sequence[bytes]) -> list[bytes]:
    path = list(_check_sequence(proof, "proof"))
    for i, h in enumerate(path):
        _check_hash(h, f"proof[{i}]")
    return path
