"""Names shared by the hub's access control (state, CLI) and the proxies that enforce it.

One place, so that the hub, the hub-mode proxy and the host-mode proxy cannot disagree about a
cookie, a header or a NOTIFY channel. Nothing here imports anything.
"""

# The proxy's own session cookie (HttpOnly, SameSite=Lax, scoped to one project's path or origin).
SESSION_COOKIE = "cocalc_ctl_session"
# Access tokens and session values: a prefix, then base64url of 32 random bytes (256 bits).
TOKEN_PREFIX = "cct_"
SESSION_PREFIX = "ccs_"
# The query parameter a browser's login link carries once (`/<project>/...?token=...`).
TOKEN_QUERY = "token"
# Set by the hub proxy for the project (never passed from a client): the account making the request.
ACCOUNT_HEADER = b"x-cocalc-account"
# The hub proxy's per-host credential on every forwarded request (verified and removed by the host).
HUB_AUTH_HEADER = b"x-cocalc-hub-auth"
# NOTIFY channel for grant, token, account and session changes; payloads documented in state/hub_db.py.
ACCESS_CHANNEL = "cocalc_ctl_access"
