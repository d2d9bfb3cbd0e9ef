"""Use cases over the ledger: write and read records with audit, consent, emergency access."""
