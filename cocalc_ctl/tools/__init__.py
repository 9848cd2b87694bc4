"""Builders and parsers for external programs. No policy lives here."""
