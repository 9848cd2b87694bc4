"""`proxy`: starting the HTTP/WebSocket proxy (the server itself is the `cocalc_ctl.proxy` package).

- `serve`: `proxy serve` (route table for the mode, listen address, workers).
"""
