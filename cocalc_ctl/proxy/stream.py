"""The stream relay: one exchange on StreamReader/StreamWriter pairs (request bodies, chunked and
until-close answers, interim responses, upgrades). Mixed into server.Proxy; the rules it applies
are policy.py's, the same ones the fast path applies.
"""

from __future__ import annotations

import asyncio

from cocalc_ctl.proxy import bodies, http1, policy
from cocalc_ctl.proxy.bodies import Counter
from cocalc_ctl.proxy.http1 import HttpError, PeerClosed, UpstreamProtocolError


class ClientGone(Exception):
    """Writing to the client failed."""


class UpstreamGone(Exception):
    """Writing to the upstream failed."""


class _ClientBodyError(Exception):
    """Reading the request body from the client failed (args[0] is the cause)."""


class Side:
    """A StreamWriter whose drain failure names the side it belongs to."""
    __slots__ = ("w", "exc")

    def __init__(self, writer: asyncio.StreamWriter, exc: type[Exception]):
        self.w = writer
        self.exc = exc

    def write(self, data: bytes) -> None:
        self.w.write(data)

    async def drain(self) -> None:
        try:
            await self.w.drain()
        except (ConnectionError, OSError, RuntimeError) as e:
            raise self.exc(str(e)) from None


def connect_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "upstream refused the connection"
    return f"cannot connect to the upstream: {exc.strerror or type(exc).__name__}"


def _cancel(task) -> None:
    if task is not None and not task.done():
        task.cancel()


class StreamRelay:
    """Stream-path exchanges; expects the attributes and `_error`/`_done` of server.Proxy."""

    async def _read_response(self, ur, client: Side, head, timeout: float | None, interim_seen: int = 0):
        """The final response head; an interim 100 the request asked for is passed on to the client."""
        while True:
            try:
                async with asyncio.timeout(timeout):
                    lines = await http1.read_head_lines(ur, max_bytes=policy.RESPONSE_ACCEPT_BYTES,
                                                        max_lines=policy.RESPONSE_ACCEPT_FIELDS + 1, strict=False)
            except HttpError as exc:  # over the limits, or a bare CR: not a response we can frame
                raise UpstreamProtocolError(exc.reason) from None
            if lines is None:
                raise PeerClosed("upstream closed without a response")
            resp = http1.parse_response_head(lines)
            policy.check_response(head, resp, interim_seen)
            if resp.status == 100:
                interim_seen += 1
                if head.version == 11:
                    client.write(policy.interim_head(resp))
                    await client.drain()
                continue
            return resp

    async def _send_body(self, reader, up: Side, head, counter: Counter) -> None:
        if head.chunked:
            await bodies.relay_chunked(reader, up, timeout=self.s.idle_timeout, counter=counter)
        else:
            await bodies.relay_fixed(reader, up, head.content_length, timeout=self.s.idle_timeout, counter=counter)

    async def _exchange(self, head, out, key, reader, writer, peer, t0, upstream, has_body) -> bool:
        client = Side(writer, ClientGone)
        for attempt in (0, 1):
            try:
                ur, uw, reused = await self.pool.acquire(key, self.s.connect_timeout)
            except TimeoutError:
                self.metrics.upstream_errors["connect_timeout"] += 1
                return await self._error(writer, head, 504, "upstream connect timed out", peer, t0, upstream, has_body)
            except OSError as exc:
                self.metrics.upstream_errors["refused"] += 1
                return await self._error(writer, head, 502, connect_failure(exc), peer, t0, upstream, has_body)
            up = Side(uw, UpstreamGone)
            up.write(out)
            body_task = None
            sent = Counter()
            try:
                if not has_body:
                    resp = await self._read_response(ur, client, head, self.s.upstream_timeout)
                else:
                    body_task = asyncio.create_task(self._send_body(reader, up, head, sent))
                    resp = await self._response_while_sending(ur, client, head, body_task)
                break
            except ClientGone:
                uw.close()
                return False
            except _ClientBodyError as err:
                uw.close()
                exc = err.args[0]
                if isinstance(exc, HttpError):  # malformed body: the upstream got a truncated one, we close it
                    await self._error(writer, head, exc.status, exc.reason, peer, t0, upstream, True)
                    return False
                self._done(head, 499, Counter(), peer, t0, upstream, f"client body: {exc or type(exc).__name__}")
                return False
            except TimeoutError:
                uw.close()
                _cancel(body_task)
                self.metrics.upstream_errors["timeout"] += 1
                return await self._error(writer, head, 504, "upstream timed out", peer, t0, upstream, has_body)
            except (PeerClosed, UpstreamGone, ConnectionError, OSError) as exc:
                uw.close()
                if body_task is None and reused and attempt == 0:
                    continue  # a pooled connection the upstream had already closed: retry once, fresh
                _cancel(body_task)
                self.metrics.upstream_errors["reset"] += 1
                return await self._error(writer, head, 502, f"upstream closed the connection ({exc})",
                                         peer, t0, upstream, has_body)
            except UpstreamProtocolError as exc:
                uw.close()
                _cancel(body_task)
                self.metrics.upstream_errors["protocol"] += 1
                return await self._error(writer, head, 502, f"bad upstream response: {exc}", peer, t0, upstream,
                                         has_body)
        return await self._relay_response(head, resp, ur, uw, key, client, peer, t0, upstream,
                                          body_task=body_task, sent=sent)

    async def _response_while_sending(self, ur, client, head, body_task):
        """Stream the request body while watching for the response: an upstream may answer early, or
        (an echo) answer while it still reads, and must not be deadlocked by us finishing the upload first."""
        head_task = asyncio.create_task(self._read_response(ur, client, head, None))
        try:
            await asyncio.wait({body_task, head_task}, return_when=asyncio.FIRST_COMPLETED)
            if head_task.done():
                return head_task.result()
            exc = body_task.exception()
            if exc is None:
                timeout = self.s.upstream_timeout
            elif isinstance(exc, UpstreamGone):
                timeout = 5.0  # the upstream stopped reading; it may have answered (413...)
            else:
                raise _ClientBodyError(exc)
            async with asyncio.timeout(timeout):
                return await head_task
        finally:
            _cancel(head_task)

    async def _relay_response(self, head, resp, ur, uw, key, client: Side, peer, t0, upstream, *,
                              body_task=None, sent: Counter | None = None) -> bool:
        mode, chunked_out, keep, reusable = policy.plan_response(head, resp)
        if body_task is not None and body_task.done() and body_task.exception() is not None:
            keep = reusable = False  # the request body was not fully relayed
        try:
            head_bytes = policy.client_response_head(resp, mode, chunked_out, keep,
                                                     cookie_scope=self.cookie_scope(key))
        except UpstreamProtocolError as exc:
            uw.close()
            _cancel(body_task)
            self.metrics.upstream_errors["protocol"] += 1
            return await self._error(client.w, head, 502, f"bad upstream response: {exc}", peer, t0, upstream,
                                     body_task is not None)
        counter = Counter()
        timeout = self.s.upstream_timeout
        try:
            if mode == policy.FIXED:
                await bodies.relay_fixed(ur, client, resp.content_length, timeout=timeout, counter=counter,
                                         prefix=head_bytes)
            else:
                client.write(head_bytes)
                if mode == policy.NONE:
                    await client.drain()
                elif mode == policy.CHUNKED:
                    await bodies.relay_chunked(ur, client, timeout=timeout, counter=counter, strict=False,
                                               chunked_out=chunked_out)
                else:
                    await bodies.relay_until_close(ur, client, timeout=timeout, chunked_out=chunked_out,
                                                   counter=counter)
        except ClientGone:
            uw.close()
            _cancel(body_task)
            self._done(head, resp.status, counter, peer, t0, upstream, "client went away")
            return False
        except (PeerClosed, TimeoutError, HttpError, ConnectionError, OSError) as exc:
            uw.close()
            _cancel(body_task)
            self.metrics.upstream_errors["body"] += 1
            self._done(head, resp.status, counter, peer, t0, upstream, f"upstream body: {exc or type(exc).__name__}")
            return False
        if body_task is not None:
            if not body_task.done():
                # a complete response before the whole upload: give the last writes a moment, else close
                await asyncio.wait({body_task}, timeout=1.0)
            if not body_task.done() or body_task.cancelled() or body_task.exception() is not None:
                _cancel(body_task)
                keep = reusable = False
            if sent is not None:
                self.metrics.bytes_upstream += sent.n
        if reusable:
            self.pool.release(key, ur, uw)  # closes it instead if anything is buffered (a body on a 204...)
        else:
            uw.close()
        self._done(head, resp.status, counter, peer, t0, upstream, None)
        return keep

    async def continue_on_streams(self, head, resp, ur, uw, key, cr, cw, peer, local_port, t0, upstream) -> None:
        """Finish a fast-path exchange whose answer needs the stream relay, then serve on streams.
        `resp` (if given) already passed policy.check_response."""
        client = Side(cw, ClientGone)
        keep = False
        try:
            interim = 0
            if resp is not None and resp.status == 100:
                interim = 1
                if head.version == 11:
                    client.write(policy.interim_head(resp))
                    await client.drain()
                resp = None
            if resp is None:
                resp = await self._read_response(ur, client, head, self.s.upstream_timeout, interim)
        except TimeoutError:
            uw.close()
            self.metrics.upstream_errors["timeout"] += 1
            keep = await self._error(cw, head, 504, "upstream timed out", peer, t0, upstream, False)
        except ClientGone:
            uw.close()
        except (PeerClosed, ConnectionError, OSError, UpstreamProtocolError, HttpError) as exc:
            uw.close()
            self.metrics.upstream_errors["protocol"] += 1
            keep = await self._error(cw, head, 502, f"bad upstream response: {exc}", peer, t0, upstream, False)
        else:
            keep = await self._relay_response(head, resp, ur, uw, key, client, peer, t0, upstream)
        if keep:
            await self.handle(cr, cw, counted=True)
        else:
            self.metrics.active_connections -= 1
            cw.close()

    # -- upgrades -------------------------------------------------------------------------------

    async def _tunnel(self, head, out, key, reader, writer, peer, t0, upstream, watch=None) -> bool | None:
        """`watch`: (access.Pass, project_id, access generation at the check) when access control is on."""
        if head.chunked or head.content_length:
            return await self._error(writer, head, 400, "upgrade request with a body", peer, t0, upstream, True)
        try:
            ur, uw = await self.pool.open(key, self.s.connect_timeout)
        except TimeoutError:
            self.metrics.upstream_errors["connect_timeout"] += 1
            return await self._error(writer, head, 504, "upstream connect timed out", peer, t0, upstream, False)
        except OSError as exc:
            self.metrics.upstream_errors["refused"] += 1
            return await self._error(writer, head, 502, connect_failure(exc), peer, t0, upstream, False)
        client = Side(writer, ClientGone)
        uw.write(out)
        try:
            resp = await self._read_response(ur, client, head, self.s.upstream_timeout)
        except TimeoutError:
            uw.close()
            self.metrics.upstream_errors["timeout"] += 1
            return await self._error(writer, head, 504, "upstream timed out", peer, t0, upstream, False)
        except (PeerClosed, ConnectionError, OSError, UpstreamProtocolError) as exc:
            uw.close()
            self.metrics.upstream_errors["reset"] += 1
            return await self._error(writer, head, 502, f"upstream failed the upgrade ({exc})", peer, t0, upstream,
                                     False)
        except ClientGone:
            uw.close()
            return False
        if resp.status != 101:
            head.keep_alive = False
            resp.keep_alive = False  # an upgrade connection is never pooled
            return await self._relay_response(head, resp, ur, uw, key, client, peer, t0, upstream)
        upgrade = next((v for n, _, v in resp.headers if n == b"upgrade"), head.upgrade)
        try:
            head_bytes = policy.client_response_head(resp, policy.NONE, False, True,
                                                     extra=b"connection: upgrade\r\nupgrade: %s\r\n" % upgrade,
                                                     cookie_scope=self.cookie_scope(key))
        except UpstreamProtocolError as exc:
            uw.close()
            self.metrics.upstream_errors["protocol"] += 1
            return await self._error(writer, head, 502, f"bad upstream response: {exc}", peer, t0, upstream, False)
        writer.write(head_bytes)
        self.metrics.requests[101] += 1
        self.metrics.active_websockets += 1
        self.metrics.websockets_total += 1
        try:
            await client.drain()
        except ClientGone:
            self.metrics.active_websockets -= 1
            uw.close()
            return False
        from cocalc_ctl.proxy.tunnel import Tunnel

        tunnel = Tunnel(self, peer=peer, head=head, t0=t0, upstream=upstream)
        tunnel.start(reader, writer, ur, uw)
        if watch is not None and not tunnel.closed:
            self.access.watch(tunnel, head, *watch)
        return None  # the connection now belongs to the tunnel
