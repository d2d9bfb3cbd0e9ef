"""Errors of the ledger core.

    LedgerError
    +-- MalformedError        bytes do not decode into a transaction, block or genesis
    +-- InvalidBlockError     a block cannot extend the chain (height, link, root, signature)
    +-- GenesisError          a genesis document breaks the network rules

A transaction that decodes but breaks a rule is not an exception: it is committed with a
validity flag and a reason code (see ``rekam.ledger.rules``), exactly as every node does.
"""


class LedgerError(Exception):
    """Root of the ledger core's errors."""


class MalformedError(LedgerError):
    """Bytes or fields do not form a well-formed ledger object."""


class InvalidBlockError(LedgerError):
    """A block cannot extend the chain at the given state."""


class GenesisError(LedgerError):
    """A genesis document is not acceptable."""
