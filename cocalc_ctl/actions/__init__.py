"""One module per capability: plain functions returning dataclasses, used by the CLI and tests."""
