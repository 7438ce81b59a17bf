"""The upstream HTTP/1.1 client against a real asyncio server on loopback that misbehaves on cue."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time

import pytest

from longcat.engines import http1


class Server:
    """Answers by path; counts the connections it accepted and those its peer closed."""

    def __init__(self) -> None:
        self.accepted = 0
        self.lost = 0
        self.requests: list[dict] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.requests.append({"method": method, "target": target, "headers": headers, "body": body.decode()})
                if not await self.answer(target, headers, body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.lost += 1
            writer.close()

    async def answer(self, target: str, headers: dict, body: bytes, reader, writer) -> bool:
        path = target.split("?")[0]
        if path == "/echo":
            out = json.dumps({"target": target, "headers": headers, "body": body.decode()}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out) + out)
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nx-a: 1\r\nx-a: 2\r\n\r\n")
            for i in range(5):
                piece = f"data: {i}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
            await writer.drain()
            return False
        elif path == "/slow-head":
            try:
                if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                    return False  # the client left
            except TimeoutError:
                pass
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        elif path == "/hang-mid":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await reader.read()  # until the client goes away
            return False
        elif path == "/cut":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            return False
        elif path == "/garbage":
            writer.write(b"SMTP ready\r\n\r\n")
            await writer.drain()
            return False
        elif path == "/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")
        elif path == "/close-after":
            # Answers, then closes the kept-alive connection a moment later (an idle timeout).
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            return False
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return True


def with_server(test):
    """Runs an async test in a fresh event loop with a fresh server (no async pytest plugin here)."""

    @functools.wraps(test)
    def run() -> None:
        async def main() -> None:
            s = Server()
            s.port = await s.start()
            try:
                await asyncio.wait_for(test(s), 10)
            finally:
                await s.stop()

        asyncio.run(main())

    run.__signature__ = inspect.Signature()  # pytest must not look for a `server` fixture
    return run


def url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


@with_server
async def test_request_line_headers_and_body_reach_the_server(server):
    pool = http1.Pool(headers={"authorization": "Bearer sk-x"})
    r = await pool.send("POST", url(server, "/echo?a=1"), b'{"x":1}', {"content-type": "application/json"})
    assert r.status_code == 200 and r.headers.get("Content-Type") == "application/json"
    seen = json.loads(await r.aread())
    assert seen["target"] == "/echo?a=1" and seen["body"] == '{"x":1}'
    assert seen["headers"]["host"] == f"127.0.0.1:{server.port}"
    assert seen["headers"]["authorization"] == "Bearer sk-x"
    assert seen["headers"]["content-length"] == "7" and seen["headers"]["accept-encoding"] == "identity"
    await pool.aclose()


@with_server
async def test_connections_are_kept_alive_and_reused(server):
    pool = http1.Pool()
    for _ in range(5):
        r = await pool.send("POST", url(server, "/echo"), b"{}")
        await r.aread()
    assert server.accepted == 1 and pool.total == 1 and pool.in_use == 0
    await pool.aclose()


@with_server
async def test_a_chunked_stream_arrives_piece_by_piece(server):
    pool = http1.Pool()
    r = await pool.send("POST", url(server, "/chunked"), b"{}")
    assert r.headers.get("x-a") == "1, 2"
    pieces, times = [], []
    async for piece in r.aiter_bytes():
        pieces.append(piece)
        times.append(time.monotonic())
    assert b"".join(pieces) == b"".join(f"data: {i}\n\n".encode() for i in range(5))
    assert len(pieces) >= 3 and times[-1] - times[0] > 0.05  # not buffered until the end
    assert pool.in_use == 0 and pool.total == 1  # read to its end: back in the pool
    r = await pool.send("POST", url(server, "/echo"), b"{}")
    await r.aread()
    assert server.accepted == 1
    await pool.aclose()


@with_server
async def test_a_body_delimited_by_the_end_of_the_connection(server):
    pool = http1.Pool()
    r = await pool.send("GET", url(server, "/until-close"), b"")
    assert await r.aread() == b"all of it"
    assert pool.total == 0  # not reusable
    await pool.aclose()


@with_server
async def test_an_interim_response_is_skipped(server):
    pool = http1.Pool()
    r = await pool.send("POST", url(server, "/continue"), b"{}")
    assert r.status_code == 201 and await r.aread() == b"done"
    await pool.aclose()


@with_server
async def test_read_timeout_while_waiting_for_headers(server):
    pool = http1.Pool(read_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(http1.ReadTimeout):
        await pool.send("POST", url(server, "/slow-head"), b"{}")
    assert time.monotonic() - started < 0.8
    assert pool.total == 0
    await pool.aclose()


@with_server
async def test_read_timeout_mid_stream(server):
    pool = http1.Pool(read_timeout=0.2)
    r = await pool.send("POST", url(server, "/hang-mid"), b"{}")
    got = b""
    with pytest.raises(http1.ReadTimeout):
        async for piece in r.aiter_bytes():
            got += piece
    assert got == b"first" and pool.total == 0
    await asyncio.sleep(0.05)
    assert server.lost == 1  # the connection was closed: the upstream's request ends
    await pool.aclose()


@with_server
async def test_a_stream_cut_midway_is_dropped_after_its_data(server):
    pool = http1.Pool()
    r = await pool.send("POST", url(server, "/cut"), b"{}")
    got = b""
    with pytest.raises(http1.Dropped):
        async for piece in r.aiter_bytes():
            got += piece
    assert got == b"first" and pool.total == 0
    await pool.aclose()


@with_server
async def test_not_http_is_dropped(server):
    pool = http1.Pool()
    with pytest.raises(http1.Dropped):
        await pool.send("POST", url(server, "/garbage"), b"{}")
    assert pool.total == 0
    await pool.aclose()


def test_connection_refused_is_connect_failed():
    asyncio.run(_refused())


async def _refused():
    pool = http1.Pool(connect_timeout=1)
    s = Server()
    port = await s.start()
    await s.stop()
    with pytest.raises(http1.ConnectFailed):
        await pool.send("POST", f"http://127.0.0.1:{port}/echo", b"{}")
    assert pool.total == 0
    await pool.aclose()


@with_server
async def test_closing_a_response_early_closes_its_connection(server):
    pool = http1.Pool()
    r = await pool.send("POST", url(server, "/hang-mid"), b"{}")
    async for piece in r.aiter_bytes():
        assert piece == b"first"
        break
    await r.aclose()
    await asyncio.sleep(0.05)
    assert server.lost == 1 and pool.total == 0
    await pool.aclose()


@with_server
async def test_a_cancelled_request_gives_its_connection_back(server):
    pool = http1.Pool()
    task = asyncio.create_task(pool.send("POST", url(server, "/slow-head"), b"{}"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.total == 0
    await asyncio.sleep(0.05)
    assert server.lost == 1
    await pool.aclose()


@with_server
async def test_the_pool_waits_for_a_free_connection_then_times_out(server):
    pool = http1.Pool(max_connections=1, pool_timeout=0.3)
    held = await pool.send("POST", url(server, "/hang-mid"), b"{}")
    with pytest.raises(http1.PoolTimeout):
        await pool.send("POST", url(server, "/echo"), b"{}")
    # Room comes back when the holder closes.
    waiting = asyncio.create_task(pool.send("POST", url(server, "/echo"), b"{}"))
    await asyncio.sleep(0.05)
    await held.aclose()
    r = await asyncio.wait_for(waiting, 2)
    assert json.loads(await r.aread())["target"] == "/echo"
    assert pool.total == 1
    await pool.aclose()


@with_server
async def test_a_kept_alive_connection_closed_by_the_server_is_not_reused(server):
    pool = http1.Pool()
    r = await pool.send("POST", url(server, "/close-after"), b"{}")
    assert await r.aread() == b"ok"
    await asyncio.sleep(0.2)  # the server has closed it meanwhile
    r = await pool.send("POST", url(server, "/echo"), b"{}")
    assert json.loads(await r.aread())["target"] == "/echo"
    assert server.accepted == 2
    await pool.aclose()


@with_server
async def test_a_stale_connection_that_fails_as_it_is_used_is_replaced(server):
    # The server closes a kept-alive connection at the moment it is reused: no byte of a
    # response came back, so the request goes out again on a new connection.
    pool = http1.Pool()
    r = await pool.send("POST", url(server, "/echo"), b"{}")
    await r.aread()
    conn = pool.idle[("http", "127.0.0.1", server.port)][0]
    server.writers[0].transport.abort()  # the server side goes away...
    conn.closed = False  # ...before the client has noticed
    r = await pool.send("POST", url(server, "/echo"), b'{"again":1}')
    assert json.loads(await r.aread())["body"] == '{"again":1}'
    assert server.accepted == 2
    await pool.aclose()


@with_server
async def test_concurrent_requests_share_the_pool(server):
    pool = http1.Pool(max_connections=4)

    async def one(i: int) -> str:
        r = await pool.send("POST", url(server, f"/echo?i={i}"), b"{}")
        return json.loads(await r.aread())["target"]

    got = await asyncio.gather(*(one(i) for i in range(40)))
    assert got == [f"/echo?i={i}" for i in range(40)]
    assert server.accepted <= 4 and pool.total <= 4 and pool.in_use == 0
    await pool.aclose()


def _self_signed(tmp_path) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_verifies_the_server_and_keeps_the_connection(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)

    async def main() -> None:
        s = Server()
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(cert, key)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0, ssl=server_tls)
        port = s.server.sockets[0].getsockname()[1]
        try:
            # Trusted: answers, and the second request reuses the TLS connection.
            trusting = http1.Pool(ssl_context=ssl.create_default_context(cafile=cert))
            for _ in range(2):
                r = await trusting.send("POST", f"https://localhost:{port}/echo", b"{}")
                assert json.loads(await r.aread())["headers"]["host"] == f"localhost:{port}"
            assert s.accepted == 1
            await trusting.aclose()
            # Not trusted: refused before anything is sent.
            with pytest.raises(http1.ConnectFailed, match="TLS"):
                await http1.Pool(ssl_context=ssl.create_default_context()).send("POST", f"https://localhost:{port}/echo", b"{}")
        finally:
            await s.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
