"""Test support: real loopback btrfs hosts, a throwaway PostgreSQL, and a CLI runner."""
