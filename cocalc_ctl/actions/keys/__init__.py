"""`keys` and `sshpiper`: this host's keypairs, peers' public keys, and the SSH auth decision.

- `keys`: `keys ensure|show|rotate|register` (this host's ed25519 keypairs, 0600 under secrets_dir).
- `keysync`: `keys sync|watch|trust|known-hosts` (peers' keys from the hub into host sqlite).
- `hub_keys`: the hub principal's key (`hub keys ensure`), used by the move worker.
- `sshauth`: the login decision (`sshpiper auth|authorized-keys`), with a fast path for sshd.
- `sshauth_server`: `sshpiper serve`, the REST endpoint sshpiperd asks.
- `sshpiper_config`: `sshpiper config` (sshpiperd command line, receiver sshd_config).
- `receiver_users`: the local accounts the move receiver's logins map to.
- `proxy_secrets`: `keys proxy-secret` (per-host secrets of the hub proxy's credential; pulled by `keys sync`).
"""
