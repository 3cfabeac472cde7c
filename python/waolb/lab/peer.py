"""Both ends of the lab's traffic, run as a script inside a namespace (standard library only,
started with ``python -S``, so it starts fast and imports nothing of waolb's).

``peer.py serve NAME PORTS PROTOCOLS`` answers every TCP line, UDP datagram and SCTP handshake
on PORTS with ``"NAME SOURCE"``: its identity and the source address it saw (so a test can
tell which backend answered and whether the path in between translated the client's address).
It prints ``ready`` once listening and exits when its stdin closes.

``peer.py exchange OPTIONS_JSON`` makes many short exchanges one after another (a new socket,
hence a new connection and conntrack entry, each) and prints, as JSON, answers per backend,
the source addresses backends saw, errors by errno name and per-backend latency samples.

SCTP: where the kernel has it, SCTP runs over real SCTP sockets exactly like TCP. Where it has
not (``CONFIG_IP_SCTP`` unset, as on the machines this project runs on), both ends speak the
start of the protocol over raw sockets: the client sends INIT, the server answers INIT_ACK
whose state cookie carries its answer, the client echoes the cookie and the server
acknowledges it. Those are real SCTP packets, so conntrack tracks the association into
ESTABLISHED and NAT rewrites it, as it would for a kernel's association.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import selectors
import socket
import struct
import sys
import time
from typing import Any

ANSWER_SIZE = 2048
STREAM_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "sctp": socket.IPPROTO_SCTP}

# ---- SCTP over raw sockets (RFC 9260) ----------------------------------------------------------

SCTP_INIT, SCTP_INIT_ACK, SCTP_ABORT, SCTP_COOKIE_ECHO, SCTP_COOKIE_ACK = 1, 2, 6, 10, 11
_STATE_COOKIE = 7
# Linux's values; Python's socket module names them only from 3.12 on.
_IP_RECVERR, _IPV6_RECVERR = 11, 25
_COMMON_HEADER = struct.Struct("!HHII")
_INIT_FIELDS = struct.Struct("!IIHHI")  # initiate tag, a_rwnd, out/in streams, initial TSN


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sctp_kernel_support() -> bool:
    """Whether this kernel has SCTP sockets (else raw sockets stand in)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        return False
    return True


def _chunk(kind: int, body: bytes) -> bytes:
    padding = b"\0" * (-len(body) % 4)
    return struct.pack("!BBH", kind, 0, 4 + len(body)) + body + padding


def sctp_packet(sport: int, dport: int, vtag: int, chunk: bytes) -> bytes:
    """A packet with the checksum filled in (CRC32c, stored little-endian)."""
    unsigned = _COMMON_HEADER.pack(sport, dport, vtag, 0) + chunk
    return unsigned[:8] + struct.pack("<I", crc32c(unsigned)) + unsigned[12:]


def sctp_parse(packet: bytes) -> tuple[int, int, int, int, bytes] | None:
    """(sport, dport, vtag, first chunk type, first chunk body), or None if it is not valid."""
    if len(packet) < 16:
        return None
    sport, dport, vtag, _ = _COMMON_HEADER.unpack_from(packet)
    zeroed = packet[:8] + b"\0\0\0\0" + packet[12:]
    if struct.unpack_from("<I", packet, 8)[0] != crc32c(zeroed):
        return None
    kind, _, length = struct.unpack_from("!BBH", packet, 12)
    return sport, dport, vtag, kind, packet[16 : 12 + length]


def _init_body(tag: int, parameters: bytes = b"") -> bytes:
    return _INIT_FIELDS.pack(tag, 65536, 1, 1, tag) + parameters


def _cookie_parameter(cookie: bytes) -> bytes:
    return struct.pack("!HH", _STATE_COOKIE, 4 + len(cookie)) + cookie + b"\0" * (-len(cookie) % 4)


def _cookie_of(init_ack: bytes) -> bytes | None:
    offset = _INIT_FIELDS.size
    while offset + 4 <= len(init_ack):
        kind, length = struct.unpack_from("!HH", init_ack, offset)
        if length < 4:
            return None
        if kind == _STATE_COOKIE:
            return init_ack[offset + 4 : offset + length]
        offset += length + (-length % 4)
    return None


def _raw_payload(family: int, data: bytes) -> bytes:
    # IPv4 raw sockets hand over the IP header too; IPv6 ones do not.
    return data[(data[0] & 0x0F) * 4 :] if family == socket.AF_INET else data


# ---- the server ----------------------------------------------------------------------------------


def _peer_address(addr: tuple[Any, ...]) -> str:
    host = str(addr[0])
    return host[7:] if host.startswith("::ffff:") else host


def _dual_stack(kind: int, proto: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind, proto)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(4096)
    sock.setblocking(False)
    return sock


class Server:
    """One process's listening sockets and the connections they accepted."""

    def __init__(self, name: str, ports: list[int], protocols: list[str]) -> None:
        self.name = name
        self.ports = set(ports)
        self.selector = selectors.DefaultSelector()
        for protocol in protocols:
            if protocol == "udp":
                for port in ports:
                    self._watch(_dual_stack(socket.SOCK_DGRAM, 0, port), self._datagram)
            elif protocol == "sctp" and not sctp_kernel_support():
                for family in (socket.AF_INET, socket.AF_INET6):
                    raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_SCTP)
                    raw.setblocking(False)
                    self._watch(raw, self._sctp_raw)
            else:
                for port in ports:
                    listener = _dual_stack(socket.SOCK_STREAM, STREAM_PROTOCOLS[protocol], port)
                    self._watch(listener, self._accept)
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)

    def _watch(self, sock: socket.socket, handler: Any, state: Any = None) -> None:
        self.selector.register(sock, selectors.EVENT_READ, (handler, state))

    def answer(self, peer: str) -> bytes:
        return f"{self.name} {peer}".encode()

    def run(self) -> None:
        print("ready", flush=True)
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    if not os.read(sys.stdin.fileno(), 4096):
                        return
                    continue
                handler, state = key.data
                # One peer's trouble (a reset, a rejected reply) is not the server's.
                with contextlib.suppress(OSError):
                    handler(key.fileobj, state)

    def _accept(self, listener: socket.socket, _state: None) -> None:
        conn, addr = listener.accept()
        conn.setblocking(False)
        self._watch(conn, self._stream, [_peer_address(addr), b""])

    def _stream(self, conn: socket.socket, state: list[Any]) -> None:
        try:
            data = conn.recv(4096)
            *lines, state[1] = (state[1] + data).split(b"\n")
            for _ in lines:
                conn.sendall(self.answer(state[0]) + b"\n")
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(conn)
            conn.close()

    def _datagram(self, sock: socket.socket, _state: None) -> None:
        _, addr = sock.recvfrom(ANSWER_SIZE)
        sock.sendto(self.answer(_peer_address(addr)), addr)

    def _sctp_raw(self, sock: socket.socket, _state: None) -> None:
        data, addr = sock.recvfrom(65535)
        parsed = sctp_parse(_raw_payload(sock.family, data))
        if parsed is None:
            return
        sport, dport, _, kind, body = parsed
        if kind == SCTP_INIT and len(body) >= _INIT_FIELDS.size:
            peer_tag = _INIT_FIELDS.unpack_from(body)[0]
            if dport not in self.ports:  # as a kernel with no socket on that port answers
                packet = sctp_packet(dport, sport, peer_tag, _chunk(SCTP_ABORT, b""))
                sock.sendto(packet, (addr[0], 0))
                return
            # Stateless: the cookie carries the client's tag, for the COOKIE_ACK's header.
            cookie = struct.pack("!I", peer_tag) + self.answer(_peer_address(addr))
            own_tag = random.randint(1, 2**32 - 1)
            chunk = _chunk(SCTP_INIT_ACK, _init_body(own_tag, _cookie_parameter(cookie)))
            sock.sendto(sctp_packet(dport, sport, peer_tag, chunk), (addr[0], 0))
        elif kind == SCTP_COOKIE_ECHO and dport in self.ports and len(body) >= 4:
            peer_tag = struct.unpack_from("!I", body)[0]
            packet = sctp_packet(dport, sport, peer_tag, _chunk(SCTP_COOKIE_ACK, b""))
            sock.sendto(packet, (addr[0], 0))


# ---- the client ----------------------------------------------------------------------------------


class Options:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.proto: str = raw["proto"]
        self.host: str = raw["host"]
        self.port: int = int(raw["port"])
        self.count: int = int(raw["count"])
        self.timeout: float = float(raw["timeout"])
        self.budget: float = float(raw["budget"])
        self.source: str | None = raw.get("source")
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET


def _socket(options: Options, kind: int, proto: int = 0) -> socket.socket:
    sock = socket.socket(options.family, kind, proto)
    sock.settimeout(options.timeout)
    if options.source:
        sock.bind((options.source, 0))
    return sock


def _stream_exchange(options: Options) -> bytes:
    with _socket(options, socket.SOCK_STREAM, STREAM_PROTOCOLS[options.proto]) as sock:
        sock.connect((options.host, options.port))
        sock.sendall(b"?\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "closed without an answer")
            data += chunk
        return data


def _udp_exchange(options: Options) -> bytes:
    with _socket(options, socket.SOCK_DGRAM) as sock:
        sock.connect((options.host, options.port))
        for attempt in range(3):
            sock.send(b"?")
            try:
                return sock.recv(ANSWER_SIZE)
            except TimeoutError:
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")


def _sctp_wait(sock: socket.socket, sport: int, port: int, tag: int, kind: int) -> bytes:
    while True:
        parsed = sctp_parse(_raw_payload(sock.family, sock.recv(65535)))
        if parsed is None or parsed[:3] != (port, sport, tag):
            continue
        if parsed[3] == SCTP_ABORT:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "ABORT")
        if parsed[3] == kind:
            return parsed[4]


def _sctp_raw_exchange(options: Options) -> bytes:
    with _socket(options, socket.SOCK_RAW, socket.IPPROTO_SCTP) as sock:
        # Connected, with RECVERR, so ICMP errors (a reject) surface as errors of recv().
        if options.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        sock.connect((options.host, 0))
        sport, tag = random.randint(32768, 60999), random.randint(1, 2**32 - 1)
        init = sctp_packet(sport, options.port, 0, _chunk(SCTP_INIT, _init_body(tag)))
        for attempt in range(3):
            sock.send(init)
            try:
                init_ack = _sctp_wait(sock, sport, options.port, tag, SCTP_INIT_ACK)
                break
            except TimeoutError:
                if attempt == 2:
                    raise
        cookie = _cookie_of(init_ack)
        if cookie is None or len(cookie) < 4:
            raise ConnectionResetError(errno.ECONNRESET, "INIT_ACK without a state cookie")
        peer_tag = _INIT_FIELDS.unpack_from(init_ack)[0]
        echo = _chunk(SCTP_COOKIE_ECHO, cookie)
        sock.send(sctp_packet(sport, options.port, peer_tag, echo))
        _sctp_wait(sock, sport, options.port, tag, SCTP_COOKIE_ACK)
        return cookie[4:]


def _error_name(error: OSError) -> str:
    if error.errno:
        return errno.errorcode.get(error.errno, type(error).__name__)
    return type(error).__name__


def exchange(options: Options) -> dict[str, Any]:
    if options.proto == "udp":
        once = _udp_exchange
    elif options.proto == "sctp" and not sctp_kernel_support():
        once = _sctp_raw_exchange
    else:
        once = _stream_exchange
    counts: dict[str, int] = {}
    sources: dict[str, set[str]] = {}
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    start = time.monotonic()
    for _ in range(options.count):
        began = time.monotonic()
        if began - start > options.budget:
            errors["over budget"] = errors.get("over budget", 0) + 1
            continue
        try:
            backend, source = once(options).decode().split()
        except OSError as error:
            name = _error_name(error)
            errors[name] = errors.get(name, 0) + 1
            continue
        except ValueError:  # not "NAME SOURCE": something else answered
            errors["bad answer"] = errors.get("bad answer", 0) + 1
            continue
        counts[backend] = counts.get(backend, 0) + 1
        sources.setdefault(backend, set()).add(source)
        latencies.setdefault(backend, []).append(time.monotonic() - began)
    return {
        "counts": counts,
        "sources": {backend: sorted(seen) for backend, seen in sources.items()},
        "errors": errors,
        "latencies": latencies,
        "seconds": time.monotonic() - start,
    }


def main(argv: list[str]) -> int:
    if argv[1:2] == ["serve"] and len(argv) == 5:
        ports = [int(port) for port in argv[3].split(",")]
        Server(argv[2], ports, argv[4].split(",")).run()
        return 0
    if argv[1:2] == ["exchange"] and len(argv) == 3:
        print(json.dumps(exchange(Options(json.loads(argv[2])))))
        return 0
    print(f"usage: {argv[0]} serve NAME PORTS PROTOCOLS | exchange OPTIONS_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
