"""Tests for rekam.ledger.merkle against RFC 9162 section 2.1.

The reference functions below transcribe the RFC's recursive definitions directly and
share no code with the module under test.
"""

import hashlib
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rekam.ledger.merkle import (
    MerkleLog,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------- reference


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth_hashes(d: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes: MTH({}) = SHA-256(), MTH({d0}) = d0, else split at k."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = ref_k(n)
    return ref_node(ref_mth_hashes(d[:k]), ref_mth_hashes(d[k:]))


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    return ref_mth_hashes([ref_leaf(x) for x in leaves])


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    n = len(d)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth_hashes(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth_hashes(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth_hashes(d)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth_hashes(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth_hashes(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def hashes(n: int) -> list[bytes]:
    return [ref_leaf(i.to_bytes(4, "big")) for i in range(n)]


# --------------------------------------------------------------------------- known vectors

EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ONE_EMPTY_LEAF_ROOT = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"

# The test vectors of the Certificate Transparency reference implementation
# (certificate-transparency merkle_tree_test, also in transparency-dev/merkle testonly).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    EMPTY_ROOT,
    ONE_EMPTY_LEAF_ROOT,
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (1, 1): [],
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


def test_literal_roots_of_empty_and_one_empty_leaf() -> None:
    assert merkle_root([]).hex() == EMPTY_ROOT
    assert root_from_leaf_hashes([]).hex() == EMPTY_ROOT
    assert MerkleLog().root().hex() == EMPTY_ROOT
    assert merkle_root([b""]).hex() == ONE_EMPTY_LEAF_ROOT
    assert leaf_hash(b"").hex() == ONE_EMPTY_LEAF_ROOT


def test_leaf_and_node_hash_domain_separation() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert a == hashlib.sha256(b"\x00a").digest()
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert node_hash(a, b) != node_hash(b, a)


@pytest.mark.parametrize("n", range(9))
def test_roots_of_0_to_8_leaves_match_reference(n: int) -> None:
    leaves = [bytes([i]) for i in range(n)]
    assert merkle_root(leaves) == ref_mth(leaves)


@pytest.mark.parametrize("n", range(9))
def test_ct_reference_roots(n: int) -> None:
    assert merkle_root(CT_LEAVES[:n]).hex() == CT_ROOTS[n]
    assert ref_mth(CT_LEAVES[:n]).hex() == CT_ROOTS[n]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_ct_reference_inclusion_proofs(index: int, size: int) -> None:
    leaf_hashes = [leaf_hash(x) for x in CT_LEAVES[:size]]
    proof = inclusion_proof(leaf_hashes, index)
    assert [h.hex() for h in proof] == CT_INCLUSION[index, size]
    verify_inclusion(leaf_hashes[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_ct_reference_consistency_proofs(old: int, new: int) -> None:
    leaf_hashes = [leaf_hash(x) for x in CT_LEAVES[:new]]
    proof = consistency_proof(leaf_hashes, old)
    assert [h.hex() for h in proof] == CT_CONSISTENCY[old, new]
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    verify_consistency(old, new, old_root, new_root, proof)


# --------------------------------------------------------------------------- exhaustive, small


def test_roots_and_inclusion_proofs_match_reference_up_to_40_leaves() -> None:
    for n in range(41):
        d = hashes(n)
        root = root_from_leaf_hashes(d)
        assert root == ref_mth_hashes(d)
        for m in range(n):
            proof = inclusion_proof(d, m)
            assert proof == ref_path(m, d), (m, n)
            verify_inclusion(d[m], m, n, proof, root)


def test_consistency_for_every_pair_up_to_64() -> None:
    d = hashes(64)
    log = MerkleLog(d)
    for n in range(1, 65):
        new_root = log.root(n)
        for m in range(1, n + 1):
            old_root = log.root(m)
            proof = consistency_proof(d[:n], m)
            assert proof == ref_proof(m, d[:n]), (m, n)
            verify_consistency(m, n, old_root, new_root, proof)
            for j in range(len(proof)):
                tampered = list(proof)
                tampered[j] = flip(proof[j], (m * 31 + n * 7 + j) % 256)
                with pytest.raises(ProofError):
                    verify_consistency(m, n, old_root, new_root, tampered)
            with pytest.raises(ProofError):
                verify_consistency(m, n, flip(old_root, (m + n) % 256), new_root, proof)
            with pytest.raises(ProofError):
                verify_consistency(m, n, old_root, flip(new_root, (m * n) % 256), proof)
            with pytest.raises(ProofError):
                verify_consistency(m, n, old_root, new_root, [*proof, new_root])
            if proof:
                with pytest.raises(ProofError):
                    verify_consistency(m, n, old_root, new_root, proof[:-1])


def test_tree_size_is_bound_only_through_the_root() -> None:
    # The RFC algorithm cannot tell a size-4 path for leaf 0 from a size-3 one: both
    # hash left, right. A caller must take the tree size and root from the same
    # signed tree head; against the real size-3 root the same proof fails.
    d = hashes(4)
    proof = inclusion_proof(d, 0)
    verify_inclusion(d[0], 0, 3, proof, root_from_leaf_hashes(d))
    with pytest.raises(ProofError, match="root mismatch"):
        verify_inclusion(d[0], 0, 3, proof, root_from_leaf_hashes(d[:3]))


# --------------------------------------------------------------------------- properties

# Distinct leaves: with two equal leaves, swapping their indexes is not an error.
trees = st.lists(st.binary(max_size=4), min_size=1, max_size=200, unique=True).map(
    lambda leaves: [leaf_hash(x) for x in leaves]
)


@settings(deadline=None, max_examples=60)
@given(trees)
def test_every_leaf_inclusion_proof_verifies(d: list[bytes]) -> None:
    log = MerkleLog(d)
    root = log.root()
    assert root == root_from_leaf_hashes(d)
    for m in range(len(d)):
        proof = log.inclusion_proof(m)
        verify_inclusion(d[m], m, len(d), proof, root)


@settings(deadline=None)
@given(trees, st.data())
def test_any_flipped_bit_breaks_inclusion(d: list[bytes], data: st.DataObject) -> None:
    n = len(d)
    m = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(d, m)
    root = root_from_leaf_hashes(d)
    bit = data.draw(st.integers(0, 255), label="bit")
    targets = ["leaf", "root"] + (["proof"] if proof else [])
    target = data.draw(st.sampled_from(targets), label="target")
    leaf, path, top = d[m], list(proof), root
    if target == "leaf":
        leaf = flip(leaf, bit)
    elif target == "root":
        top = flip(top, bit)
    else:
        j = data.draw(st.integers(0, len(path) - 1), label="position")
        path[j] = flip(path[j], bit)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, m, n, path, top)


@settings(deadline=None)
@given(trees, st.data())
def test_changed_index_or_tree_size_breaks_inclusion(d: list[bytes], data: st.DataObject) -> None:
    big = len(d)
    log = MerkleLog(d)
    n = data.draw(st.integers(1, big), label="tree size")
    m = data.draw(st.integers(0, n - 1), label="index")
    proof = log.inclusion_proof(m, n)
    root = log.root(n)
    verify_inclusion(d[m], m, n, proof, root)

    other_index = data.draw(st.integers(-2, n + 2).filter(lambda i: i != m), label="new index")
    with pytest.raises(ProofError):
        verify_inclusion(d[m], other_index, n, proof, root)

    # A different size is checked against that size's own root (see
    # test_tree_size_is_bound_only_through_the_root).
    other_size = data.draw(st.sampled_from([s for s in range(big + 1) if s != n]), label="new size")
    with pytest.raises(ProofError):
        verify_inclusion(d[m], m, other_size, proof, log.root(other_size))


@settings(deadline=None)
@given(st.data())
def test_any_flipped_bit_breaks_consistency(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 64), label="new size")
    m = data.draw(st.integers(1, n - 1), label="old size")
    d = hashes(n)
    proof = consistency_proof(d, m)
    old_root, new_root = root_from_leaf_hashes(d[:m]), root_from_leaf_hashes(d)
    verify_consistency(m, n, old_root, new_root, proof)
    bit = data.draw(st.integers(0, 255), label="bit")
    target = data.draw(st.sampled_from(["old root", "new root", "proof"]), label="target")
    path = list(proof)
    if target == "old root":
        old_root = flip(old_root, bit)
    elif target == "new root":
        new_root = flip(new_root, bit)
    else:
        j = data.draw(st.integers(0, len(path) - 1), label="position")
        path[j] = flip(path[j], bit)
    with pytest.raises(ProofError):
        verify_consistency(m, n, old_root, new_root, path)


@settings(deadline=None)
@given(trees, st.data())
def test_merkle_log_agrees_with_free_functions(d: list[bytes], data: st.DataObject) -> None:
    log = MerkleLog()
    for i, h in enumerate(d):
        assert log.append(h) == i
    assert log.size == len(d)
    n = data.draw(st.integers(0, len(d)), label="size")
    prefix = d[:n]
    assert log.root(n) == root_from_leaf_hashes(prefix)
    if n:
        m = data.draw(st.integers(0, n - 1), label="index")
        assert log.inclusion_proof(m, n) == inclusion_proof(prefix, m)
        old = data.draw(st.integers(1, n), label="old size")
        assert log.consistency_proof(old, n) == consistency_proof(prefix, old)
    assert log.inclusion_proof(len(d) - 1) == inclusion_proof(d, len(d) - 1)
    assert log.consistency_proof(1) == consistency_proof(d, 1)


def test_large_log_is_iterative_and_consistent() -> None:
    n = 100_000
    d = hashes(n)
    root = root_from_leaf_hashes(d)

    # An independent iterative MTH: pair neighbours level by level, carrying an odd
    # last node up unchanged (that node is on the ragged right edge).
    level = list(d)
    while len(level) > 1:
        paired = [ref_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = paired + level[len(paired) * 2 :]
    assert root == level[0]

    log = MerkleLog(d)
    assert log.root() == root
    for m in (0, 1, 12_345, 65_535, 65_536, n - 1):
        verify_inclusion(d[m], m, n, log.inclusion_proof(m), root)
    for old in (1, 3, 65_536, 99_999, n):
        verify_consistency(old, n, log.root(old), root, log.consistency_proof(old))


# --------------------------------------------------------------------------- errors


def test_equal_sizes_need_an_empty_proof_and_equal_roots() -> None:
    d = hashes(5)
    root = root_from_leaf_hashes(d)
    assert consistency_proof(d, 5) == []
    verify_consistency(5, 5, root, root, [])
    with pytest.raises(ProofError, match="proof has 1 hashes, expected 0"):
        verify_consistency(5, 5, root, root, [root])
    with pytest.raises(ProofError, match="root mismatch for equal sizes"):
        verify_consistency(5, 5, root, flip(root, 0), [])


def test_error_messages_say_what_was_expected() -> None:
    d = hashes(5)
    root = root_from_leaf_hashes(d)
    proof = inclusion_proof(d, 2)
    with pytest.raises(ProofError, match="index 7 out of range for tree size 5"):
        verify_inclusion(d[2], 7, 5, proof, root)
    with pytest.raises(ProofError, match="proof has 2 hashes, expected 3"):
        verify_inclusion(d[2], 2, 5, proof[:2], root)
    bad = flip(root, 3)
    with pytest.raises(ProofError, match=f"root mismatch: expected {bad.hex()}, computed "):
        verify_inclusion(d[2], 2, 5, proof, bad)
    old_root = root_from_leaf_hashes(d[:3])
    cproof = consistency_proof(d, 3)
    with pytest.raises(ProofError, match="old root mismatch: expected"):
        verify_consistency(3, 5, flip(old_root, 9), root, cproof)
    with pytest.raises(ProofError, match="new root mismatch: expected"):
        verify_consistency(3, 5, old_root, flip(root, 9), cproof)
    with pytest.raises(ProofError, match="leaf hash must be 32 bytes, got 31"):
        verify_inclusion(d[2][:31], 2, 5, proof, root)
    with pytest.raises(ProofError, match=r"proof\[1\] must be 32 bytes, got 33"):
        verify_inclusion(d[2], 2, 5, [proof[0], proof[1] + b"x", proof[2]], root)


H = hashes(1)[0]
MALFORMED: list[tuple[str, Callable[[], object]]] = [
    ("leaf data str", lambda: leaf_hash("x")),  # type: ignore[arg-type]
    ("node short left", lambda: node_hash(H[:5], H)),
    ("node str right", lambda: node_hash(H, "x" * 32)),  # type: ignore[arg-type]
    ("merkle_root of None", lambda: merkle_root(None)),  # type: ignore[arg-type]
    ("merkle_root of ints", lambda: merkle_root([1, 2])),  # type: ignore[list-item]
    ("root of bytes", lambda: root_from_leaf_hashes(H)),  # type: ignore[arg-type]
    ("root of short hash", lambda: root_from_leaf_hashes([H, b"abc"])),
    ("inclusion empty tree", lambda: inclusion_proof([], 0)),
    ("inclusion negative index", lambda: inclusion_proof([H], -1)),
    ("inclusion index too big", lambda: inclusion_proof([H], 1)),
    ("inclusion str index", lambda: inclusion_proof([H], "0")),  # type: ignore[arg-type]
    ("inclusion bool index", lambda: inclusion_proof([H], False)),
    ("consistency old 0", lambda: consistency_proof([H], 0)),
    ("consistency old > new", lambda: consistency_proof([H], 2)),
    ("consistency float", lambda: consistency_proof([H], 1.0)),  # type: ignore[arg-type]
    ("verify negative size", lambda: verify_inclusion(H, 0, -1, [], H)),
    ("verify size zero", lambda: verify_inclusion(H, 0, 0, [], H)),
    ("verify None proof", lambda: verify_inclusion(H, 0, 1, None, H)),  # type: ignore[arg-type]
    ("verify bytes proof", lambda: verify_inclusion(H, 0, 2, H, H)),  # type: ignore[arg-type]
    ("verify None root", lambda: verify_inclusion(H, 0, 1, [], None)),  # type: ignore[arg-type]
    ("verify str element", lambda: verify_inclusion(H, 0, 2, ["x"], H)),  # type: ignore[list-item]
    ("verify None index", lambda: verify_inclusion(H, None, 1, [], H)),  # type: ignore[arg-type]
    ("consistency old 0", lambda: verify_consistency(0, 1, H, H, [])),
    ("consistency negative", lambda: verify_consistency(-1, 1, H, H, [H])),
    ("consistency old > new", lambda: verify_consistency(2, 1, H, H, [H])),
    ("consistency empty proof", lambda: verify_consistency(1, 2, H, H, [])),
    ("consistency short root", lambda: verify_consistency(1, 2, H[:1], H, [H])),
    ("consistency bytearray", lambda: verify_consistency(1, 2, H, bytearray(H), [H])),  # type: ignore[arg-type]
    ("consistency str size", lambda: verify_consistency(1, "2", H, H, [H])),  # type: ignore[arg-type]
    ("log of None", lambda: MerkleLog(None)),  # type: ignore[arg-type]
    ("log append short", lambda: MerkleLog().append(b"")),
    ("log root too big", lambda: MerkleLog([H]).root(2)),
    ("log root negative", lambda: MerkleLog([H]).root(-1)),
    ("log inclusion past size", lambda: MerkleLog([H, H]).inclusion_proof(1, 1)),
    ("log consistency new too big", lambda: MerkleLog([H]).consistency_proof(1, 2)),
    ("log consistency old 0", lambda: MerkleLog([H]).consistency_proof(0)),
]


@pytest.mark.parametrize("call", [c for _, c in MALFORMED], ids=[name for name, _ in MALFORMED])
def test_malformed_inputs_raise_proof_error(call: Callable[[], object]) -> None:
    with pytest.raises(ProofError):
        call()


def test_proof_error_is_a_value_error() -> None:
    assert issubclass(ProofError, ValueError)
