"""Consent domain rules: choosing the basis on which a principal may act on a patient's data."""
