"""The ledger core: transactions, blocks, validation, state and proofs; pure, no I/O."""
