"""The HTTP/WebSocket reverse proxy behind `cocalc-ctl proxy serve` (see server.py)."""
