"""Domain rules for medical records: FHIR content, authorship and versions; no I/O."""
