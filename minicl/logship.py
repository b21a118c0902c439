"""The clients' transport to the log host: a syslog-ng ``python()`` destination that speaks RFC 5425
(RFC 5424 lines, octet-counted, over mutual TLS) and tells syslog-ng a batch is delivered only
once the log host's TCP has acknowledged every byte of it.

syslog-ng's own network destination counts a line as delivered once the kernel took it into the
socket: what was in flight when the log host stopped or reset the connection was lost (RFC 5425
has no acknowledgements). Here a batch stays in syslog-ng's reliable disk buffer until the send
queue is empty (SIOCOUTQ 0); if the connection dies first, the batch is sent again on the next
one. The log host, before its syslog-ng stops, sends a FIN on every connection and reads each to
its end (``python -m minicl.centrallog drain``); we close our side at its FIN, so acknowledged
means stored, and the lines of a batch it had acknowledged are not sent twice. After a reset or
a timeout they are (a duplicate beats a loss).

Standard library only: syslog-ng's embedded Python (Debian's python3) runs it from a copy the
logging state installs (``INSTALLED_AS`` under ``MODULE_DIR``).
"""

import fcntl
import select
import socket
import ssl
import struct
import termios
import threading
import time

MODULE_DIR = "/etc/syslog-ng/python"
INSTALLED_AS = "minicl_logship"
CLASS = f"{INSTALLED_AS}.Destination"
ACK_TIMEOUT = 60  # no progress for this long: the connection is given up and the batch resent
CONNECT_TIMEOUT = 10
CLOSE_TIMEOUT = 10  # the log host reads to the end after its FIN: this is ample
TCP_CLOSE = 7
# States in which the send queue still counts what the peer has not acknowledged: established,
# FIN-WAIT-1/2, CLOSE-WAIT, LAST-ACK, CLOSING.
OPEN_STATES = {1, 4, 5, 8, 9, 11}
# RFC 5424's header fields after PRI: (syslog-ng macro, longest allowed); SDATA comes last.
HEADER = (("ISODATE", 128), ("HOST", 255), ("PROGRAM", 48), ("PID", 128), ("MSGID", 32))
SEPARATOR = "\x1f"


def token(value, limit):
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit``, "-" if empty."""
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return clean or "-"


def frame(pri, header, sdata, message):
    """One octet-counted RFC 5425 frame of an RFC 5424 line (``message`` as bytes)."""
    fields = " ".join(token(value, limit) for value, (_, limit) in zip(header, HEADER, strict=True))
    line = f"<{pri}>1 {fields} {sdata or '-'} ".encode() + message
    return str(len(line)).encode() + b" " + line


class Ledger:
    """The frames of the batch in flight with the stream offset at which each ends."""

    def __init__(self):
        self.frames = []

    def add(self, data, end):
        self.frames.append((data, end))

    def delivered(self, acked):
        """The frames wholly within the first ``acked`` bytes of the stream."""
        return [data for data, end in self.frames if end <= acked]

    def clear(self):
        self.frames = []


class Connection:
    """TLS over one TCP connection, counting the bytes written to the kernel, so that what the
    peer acknowledged is ``written - SIOCOUTQ`` while the connection stands.

    A thread reads what the log host sends (TLS session tickets, to be dropped: unread, they
    would turn a close into a reset) and watches for its FIN: the log host is about to stop and
    reads until we close our side too, which we do at once (what was written before our FIN is
    still read and acknowledged; a write after it fails and its batch is sent again)."""

    def __init__(self, host, port, cert, key, ca):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca)
        context.load_cert_chain(cert, key)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host)
        self.sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        self.written = 0
        self.acked = 0  # as last seen while the connection stood
        self.peer_closed = False  # the log host sent its FIN: it reads all we send before ours
        self.reset = False
        self.closed = False
        try:
            self._handshake()
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.reader = self.sock.dup()  # the watcher's own handle: its own (non-)blocking mode
        self.reader.setblocking(False)
        threading.Thread(target=self._watch, name="minicl_logship watcher", daemon=True).start()

    def _handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the log host closed the connection in the TLS handshake") from None
                self.incoming.write(data)
        self._push()

    def _watch(self):
        while not self.closed:
            try:
                readable, _, _ = select.select([self.reader], [], [], 1.0)
                if not readable:
                    continue
                if self.reader.recv(65536) == b"":
                    self.peer_closed = True
                    self.reader.shutdown(socket.SHUT_WR)
                    return
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):  # a reset, or the connection closed under us
                self.reset = not self.closed
                return

    def _push(self):
        data = self.outgoing.read()
        if data:
            previous = self.sock.gettimeout()
            self.sock.settimeout(ACK_TIMEOUT)
            try:
                self.sock.sendall(data)
            finally:
                self.sock.settimeout(previous)
            self.written += len(data)

    def write(self, data):
        """Send ``data``; return the stream offset where it ends."""
        before = self.written
        self.tls.write(data)
        self._push()
        if self.written == before:
            raise ConnectionError("TLS took the line but wrote nothing: the session has ended")
        return self.written

    def unacknowledged(self):
        """Bytes the peer has not acknowledged yet, or None once the connection is broken."""
        state = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        if state == TCP_CLOSE:
            # Closed in order (both FINs acknowledged, so every byte before ours too), or reset.
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if self.peer_closed and not self.reset and not error:
                self.acked = self.written
                return 0
            return None
        if state not in OPEN_STATES:
            return None
        queued = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        self.acked = self.written - queued
        return queued

    def wait_acknowledged(self, timeout=ACK_TIMEOUT):
        """True once the peer acknowledged everything; False when the connection broke or made
        no progress for ``timeout`` seconds."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            queued = self.unacknowledged()
            if queued is None:
                return False
            if queued == 0:
                return True
            if queued != last:
                deadline, last = time.monotonic() + timeout, queued
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def close(self, abort=False):
        self.closed = True
        if abort:  # nothing more goes out: the batch is sent again on a new connection
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.reader.close()


class Destination:
    """syslog-ng python() destination: options host, port, cert, key, ca."""

    def init(self, options):
        from syslogng import LTZ_SEND, LogTemplate  # only inside syslog-ng

        self.options = options
        self.zone = LTZ_SEND
        self.header = LogTemplate(SEPARATOR.join(f"${{{name}}}" for name, _ in HEADER + (("SDATA", 0),)))
        self.pri = LogTemplate("${PRI}")
        self.connection = None
        self.ledger = Ledger()
        self.resent = []  # frames the log host stored from a batch syslog-ng will send again
        self.unreachable_since = -60.0
        return True

    def open(self):
        try:
            self.connection = Connection(
                self.options["host"],
                int(self.options["port"]),
                self.options["cert"],
                self.options["key"],
                self.options["ca"],
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Once a minute at most: syslog-ng tries again every few seconds.
            if time.monotonic() - self.unreachable_since >= 60:
                self.log(f"cannot reach the log host {self.options['host']}: {exc} (trying again)")
                self.unreachable_since = time.monotonic()
            self.connection = None
            return False
        self.unreachable_since = -60.0
        return True

    def log(self, text):
        try:
            from syslogng import Logger

            Logger().warning(f"minicl_logship: {text}")
        except Exception:  # outside syslog-ng, or a syslog-ng without Logger
            print(f"minicl_logship: {text}", flush=True)

    def is_opened(self):
        if self.connection is not None and not self.ledger.frames:
            if self.connection.unacknowledged() is None or self.connection.peer_closed:
                self.close()  # the log host went away while idle: reconnect before sending
        return self.connection is not None

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _format(self, msg):
        fields = self.header.format(msg, self.template_options, self.zone).split(SEPARATOR, len(HEADER))
        pri = self.pri.format(msg, self.template_options, self.zone)
        message = msg["MESSAGE"]
        if isinstance(message, str):
            message = message.encode()
        return frame(pri, fields[: len(HEADER)], fields[len(HEADER)], message)

    def send(self, msg):
        data = self._format(msg)
        if self.resent:
            if self.resent[0] == data:
                self.resent.pop(0)
                return self.QUEUED
            self.resent = []
        try:
            self.ledger.add(data, self.connection.write(data))
        except (OSError, ssl.SSLError):
            return self._failed()
        return self.QUEUED

    def flush(self):
        if not self.ledger.frames:
            return self.SUCCESS
        if self.connection.wait_acknowledged():
            self.ledger.clear()
            return self.SUCCESS
        return self._failed()

    def _failed(self):
        connection = self.connection
        if connection.peer_closed:
            # A write after our FIN failed before this batch was ever counted: let the close
            # finish so that ``acked`` covers what the log host read of it (stored, not resent).
            connection.wait_acknowledged(timeout=CLOSE_TIMEOUT)
            self.resent = self.ledger.delivered(connection.acked)
        self.log(
            f"the connection to the log host ended ({'closed' if connection.peer_closed else 'broken'}"
            f" with {connection.written - connection.acked} bytes unacknowledged): sending "
            f"{len(self.ledger.frames) - len(self.resent)} of the batch's "
            f"{len(self.ledger.frames)} lines again"
        )
        self.ledger.clear()
        # A reset would cost a log host reading to the end what it acknowledged and not yet read.
        connection.close(abort=not connection.peer_closed)
        self.connection = None
        return self.NOT_CONNECTED
