"""Sending to an MLLP listener: one message at a time (`MllpClient`, the `submit` command),
or many at once over a few connections (`push`, the benchmark).

`MllpClient` waits for each ACK before the next message, as most LIS do: it answers "did
this message get through, and what did the receiver say". `push` keeps up to `window`
messages in flight per connection and times each one from the moment it was written to
the moment its ACK arrived, which is the latency a LIS sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.errors import LabdispatchError
from pipeline.hl7.decode import charset_codec, declared_charset
from pipeline.hl7.errors import IntakeError
from pipeline.hl7.parse import read_delimiters
from pipeline.hl7.segments import unescape
from workers.mllp.framing import READ_SIZE, FrameDecoder, OversizedFrame, frame

ACCEPTED_CODES = ("AA", "CA")
DEFAULT_TIMEOUT = 10.0


class MllpError(LabdispatchError):
    """The conversation with the listener failed; the message says where and why."""


class CannotConnect(MllpError):
    """Nothing answers at the address (refused, unknown host, timed out)."""


class ConnectionLost(MllpError):
    """The connection broke or was closed with a message still unanswered."""


class AckTimeout(MllpError):
    """The ACK did not come in time; the message may or may not have been stored."""


@dataclass(frozen=True)
class AckReply:
    """An ACK as the sender reads it: the code, the message it answers, the reasons."""

    code: str  # MSA-1: AA / AE / AR, or CA / CE / CR in enhanced mode
    control_id: str  # MSA-2: the control ID of the message it answers
    reasons: tuple[str, ...]  # what the receiver said was wrong (ERR-8, or MSA-3 / ERR-1)
    raw: bytes

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED_CODES

    @classmethod
    def parse(cls, raw: bytes) -> AckReply:
        first = raw.split(b"\r", 1)[0]
        codec = "utf-8"
        charset = declared_charset(first)
        if charset:
            try:
                codec = charset_codec(charset)
            except IntakeError:
                codec = "utf-8"
        text = raw.decode(codec, "replace").replace("\r\n", "\r").replace("\n", "\r")
        if not text.startswith("MSH") or len(text) < 8:
            return cls("", "", ("the answer is not an HL7 ACK",), raw)
        try:
            delimiters = read_delimiters(text)
        except IntakeError:
            return cls("", "", ("the answer's MSH separators are unreadable",), raw)
        code = control_id = ""
        msa_text = ""
        user_texts: list[str] = []  # ERR-8 (2.5 on): the reason in words
        code_texts: list[str] = []  # ERR-1 / ERR-3 table 0357 text: the kind of error
        for line in text.split("\r"):
            fields = line.split(delimiters.field)
            if fields[0] == "MSA":
                code = _at(fields, 1).strip()
                control_id = unescape(_at(fields, 2), delimiters)
                msa_text = unescape(_at(fields, 3), delimiters)
            elif fields[0] == "ERR":
                severity = _at(fields, 4)
                if severity and severity not in ("E", "F"):
                    continue  # warnings and information ride along with AA
                if _at(fields, 8):
                    user_texts.append(unescape(_at(fields, 8), delimiters))
                # ERR-1 before 2.5: segment^sequence^field^code&text&table
                location = _at(fields, 1).split(delimiters.component)
                kind = _at(_at(location, 3).split(delimiters.subcomponent), 1)
                kind = kind or _at(_at(fields, 3).split(delimiters.component), 1)
                if kind:
                    code_texts.append(unescape(kind, delimiters))
        # The most telling first: the reason in words, else MSA-3 (before 2.7), else the kind.
        reasons = tuple(dict.fromkeys(user_texts)) or (
            (msa_text,) if msa_text else tuple(dict.fromkeys(code_texts))
        )
        return cls(code, control_id, reasons, raw)


def _at(values: list[str], index: int) -> str:
    return values[index] if index < len(values) else ""


class MllpClient:
    """One connection to a listener; `exchange` sends a message and returns its ACK."""

    def __init__(self, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = f"mllp://{_host_text(host)}:{port}"
        self.timeout = timeout
        try:
            self._socket = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise CannotConnect(f"cannot connect to {self.address}: {_os_reason(error)}") from error
        self._decoder = FrameDecoder()
        self._acks: deque[bytes] = deque()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()

    def send(self, message: bytes) -> None:
        try:
            self._socket.sendall(frame(message))
        except OSError as error:
            raise ConnectionLost(
                f"connection to {self.address} lost while sending: {_os_reason(error)}"
            ) from error

    def receive(self, timeout: float | None = None) -> bytes:
        """The next ACK's bytes (without framing); waits at most `timeout` seconds."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while not self._acks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AckTimeout(f"no ACK from {self.address} within {wait:g} s")
            self._socket.settimeout(remaining)
            try:
                data = self._socket.recv(READ_SIZE)
            except TimeoutError:
                continue
            except OSError as error:
                raise ConnectionLost(
                    f"connection to {self.address} lost before the ACK: {_os_reason(error)}"
                ) from error
            if not data:
                raise ConnectionLost(
                    f"connection to {self.address} lost before the ACK: closed by the listener"
                )
            for item in self._decoder.feed(data):
                if isinstance(item, bytes):
                    self._acks.append(item)
        return self._acks.popleft()

    def exchange(self, message: bytes, timeout: float | None = None) -> AckReply:
        self.send(message)
        return AckReply.parse(self.receive(timeout))


def parse_address(text: str, *, default_port: int = 2575) -> tuple[str, int]:
    """`mllp://host:port`, `host:port` or `host` (IPv6 in brackets) → (host, port)."""
    rest = text.strip()
    if "://" in rest:
        scheme, _, rest = rest.partition("://")
        if scheme.lower() != "mllp":
            raise MllpError(f"{text}: only mllp://host:port addresses are supported")
    rest = rest.rstrip("/")
    host, port_text = rest, ""
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        port_text = after.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    if not host:
        raise MllpError(f"{text}: no host; write mllp://host:port")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MllpError(f"{text}: {port_text!r} is not a port number")
    return host, int(port_text)


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _os_reason(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror or error})"
    return error.strerror or str(error) or type(error).__name__


# --- many messages at once: the benchmark's client ---------------------------------------


@dataclass
class PushReport:
    """What `push` saw: one latency per message (seconds, write → ACK) and the ACK codes."""

    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return sum(self.codes[code] for code in ACCEPTED_CODES)


async def push(
    host: str,
    port: int,
    messages: Iterable[bytes],
    *,
    connections: int = 4,
    window: int = 32,
    timeout: float = 60.0,
) -> PushReport:
    """Send every message, one frame each, over `connections` connections with up to
    `window` unanswered per connection; return when every message has its ACK.

    Every message must get exactly one ACK (original mode, or MSH-15 AL): a message the
    receiver stays silent about would be waited for until `timeout`, then MllpError.
    Connections take the next message as they have room, so a slow one takes fewer."""
    source: Iterator[bytes] = iter(messages)
    report = PushReport()
    await asyncio.gather(
        *(
            _push_one(host, port, source, report, window, timeout)
            for _ in range(max(1, connections))
        )
    )
    return report


async def _push_one(
    host: str,
    port: int,
    source: Iterator[bytes],
    report: PushReport,
    window: int,
    timeout: float,
) -> None:
    address = f"mllp://{_host_text(host)}:{port}"
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as error:
        raise CannotConnect(f"cannot connect to {address}: {_os_reason(error)}") from error
    room = asyncio.Semaphore(max(1, window))
    sent_at: deque[float] = deque()
    done_sending = asyncio.Event()

    async def send() -> None:
        for count in itertools.count(1):
            await room.acquire()
            message = next(source, None)
            if message is None:
                break
            sent_at.append(time.perf_counter())
            writer.write(frame(message))
            if count % 16 == 0 or room.locked():
                await writer.drain()
        await writer.drain()
        done_sending.set()

    async def receive() -> None:
        decoder = FrameDecoder()
        while not (done_sending.is_set() and not sent_at):
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            except TimeoutError as error:
                raise AckTimeout(
                    f"{address}: no ACK within {timeout:g} s ({len(sent_at)} waiting)"
                ) from error
            if not data:
                if done_sending.is_set() and not sent_at:
                    break
                raise ConnectionLost(f"{address} closed the connection with ACKs outstanding")
            now = time.perf_counter()
            for item in decoder.feed(data):
                if isinstance(item, OversizedFrame) or not sent_at:
                    raise MllpError(f"{address}: an ACK that answers no message we sent")
                report.latencies.append(now - sent_at.popleft())
                report.codes[_ack_code(item)] += 1
                room.release()

    sending = asyncio.create_task(send())
    receiving = asyncio.create_task(receive())
    try:
        await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
        if receiving.done():
            receiving.result()  # its error, if it stopped early
        await sending
        if sent_at:
            await receiving  # ends once the last ACK is in
    finally:
        sending.cancel()
        receiving.cancel()  # waiting on a read with nothing outstanding
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def _ack_code(ack: bytes) -> str:
    """MSA-1, read cheaply (the benchmark reads tens of thousands)."""
    start = ack.find(b"\rMSA")
    if start < 0 or len(ack) < 4:
        return "?"
    separator = ack[3:4]
    fields = ack[start + 1 : ack.find(b"\r", start + 1)].split(separator)
    return fields[1].decode("ascii", "replace") if len(fields) > 1 else "?"
