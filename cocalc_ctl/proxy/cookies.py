"""Set-Cookie hygiene: a project's cookies stay inside that project's scope.

In path mode every project shares the proxy's origin, so a project's `Set-Cookie` is rewritten on
its way to the client (policy.client_response_head, on the fast and the stream path alike):
- any `Domain` attribute is dropped (the cookie becomes host-only: it cannot reach sibling hosts, and
  in subdomain mode it cannot reach other projects' subdomains under the shared parent domain);
- in path mode a `Path` that is absent, not absolute, or not inside `/<project_id>/` is replaced by
  `Path=/<project_id>/` (the last Path attribute is the one browsers use, so all are replaced by one);
- a cookie named like the proxy's own session cookie (also with a `__Host-`/`__Secure-` prefix, or as
  a nameless cookie whose value begins with that name, which browsers send as `name=value`) is dropped
  entirely, so a project can neither set nor clear it.
Subdomain mode (scope `/`) keeps the Path: the project owns its whole origin.
"""

from __future__ import annotations

from cocalc_ctl.authnames import SESSION_COOKIE

_OURS = frozenset(n.lower().encode() for n in (SESSION_COOKIE, "__Host-" + SESSION_COOKIE,
                                                "__Secure-" + SESSION_COOKIE))


def _effective_name(pair: bytes) -> bytes:
    name, eq, value = pair.partition(b"=")
    name = name.strip(b" \t")
    if not eq:  # `Set-Cookie: foo`: a nameless cookie whose value is foo
        return name
    if not name:  # `=a=b`: nameless, value `a=b`, sent by browsers as `a=b`
        return value.partition(b"=")[0].strip(b" \t")
    return name


def rewrite(value: bytes, scope: bytes) -> bytes | None:
    """The Set-Cookie value to send for a project whose scope is `scope` (`/<project_id>/`, or `/` in
    subdomain mode); None to drop the header."""
    parts = value.split(b";")
    if _effective_name(parts[0]).lower() in _OURS:
        return None
    out = [parts[0]]
    path = None
    for attr in parts[1:]:
        key = attr.partition(b"=")[0].strip(b" \t").lower()
        if key == b"domain":
            continue
        if key == b"path":
            path = attr.partition(b"=")[2].strip(b" \t")
            continue
        out.append(attr)
    if scope != b"/":
        if path is None or not _inside(path, scope):
            path = scope
    if path is not None:
        out.append(b" Path=" + path)
    return b";".join(out)


def _inside(path: bytes, scope: bytes) -> bool:
    """Whether cookie path `path` only matches requests inside `scope` (`/<id>/`)."""
    return path.startswith(scope) or path == scope[:-1]
