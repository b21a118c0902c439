"""minicl.logship's pure parts: the RFC 5424/5425 frame and the ledger of a batch in flight.
The transport itself runs in syslog-ng on test hosts (tests/integration/test_logging.py)."""

from minicl import logship


def test_a_frame_is_octet_counted_rfc_5424():
    data = logship.frame(
        "30", ["2026-12-04T10:00:00+00:00", "alpha", "sshd", "812", ""], "", b"Accepted publickey for ann"
    )
    line = b"<30>1 2026-12-04T10:00:00+00:00 alpha sshd 812 - - Accepted publickey for ann"
    assert data == str(len(line)).encode() + b" " + line


def test_header_fields_are_printable_ascii_within_their_limits():
    assert logship.token("", 48) == "-"
    assert logship.token("my app", 48) == "my_app"
    assert logship.token("prog\u00e4", 48) == "prog_"
    assert logship.token("x" * 60, 48) == "x" * 48
    data = logship.frame("13", ["t", "h", "p" * 50, "1", "m" * 40], '[x@1 a="b"]', "é".encode())
    assert b" " + b"p" * 48 + b" 1 " + b"m" * 32 + b' [x@1 a="b"] ' + "é".encode() in data
    # The count is of bytes, not characters.
    count, line = data.split(b" ", 1)
    assert int(count) == len(line)


def test_the_ledger_names_the_frames_the_peer_acknowledged_whole():
    ledger = logship.Ledger()
    ledger.add(b"a", 10)
    ledger.add(b"b", 25)
    ledger.add(b"c", 40)
    assert ledger.delivered(9) == []
    assert ledger.delivered(25) == [b"a", b"b"]
    assert ledger.delivered(39) == [b"a", b"b"]
    assert ledger.delivered(40) == [b"a", b"b", b"c"]
    ledger.clear()
    assert ledger.delivered(100) == []


class FakeConnection:
    """Acknowledges the first ``acked`` bytes, then the peer closes (or resets: ``fin`` False)."""

    def __init__(self, acked=None, fin=True, writable=None):
        self.written, self.acked, self.limit, self.fin = 0, 0, acked, fin
        self.writable = writable  # bytes accepted before the peer's FIN makes writes fail
        self.peer_closed = False
        self.closed = None

    def write(self, data):
        if self.writable is not None and self.written + len(data) > self.writable:
            self.peer_closed = True
            raise BrokenPipeError("the log host closed: our FIN went out, a write fails")
        self.written += len(data)
        return self.written

    def wait_acknowledged(self, timeout=None):
        if self.limit is None:
            return True
        self.acked, self.peer_closed = min(self.limit, self.written), self.fin
        return self.written <= self.limit

    def close(self, abort=False):
        self.closed = "reset" if abort else "closed"


def destination(connection):
    dest = logship.Destination()
    dest.SUCCESS, dest.NOT_CONNECTED, dest.QUEUED = 3, 5, 4  # syslog-ng sets these
    dest.connection, dest.ledger, dest.resent = connection, logship.Ledger(), []
    dest._format = lambda msg: msg
    return dest


def test_a_batch_counts_as_sent_only_once_acknowledged():
    dest = destination(FakeConnection())
    assert [dest.send(b"one"), dest.send(b"two")] == [dest.QUEUED] * 2
    assert dest.flush() == dest.SUCCESS and dest.ledger.frames == []


def three_lines_then_the_end(fin):
    """A destination that sent one, two, three, of which the log host acknowledged the first two,
    then ended the connection with a FIN (``fin``) or a reset; and that connection."""
    dest = destination(FakeConnection(acked=6, fin=fin))
    for line in (b"one", b"two", b"three"):
        dest.send(line)
    return dest, dest.connection


def test_after_the_log_host_closed_only_what_it_had_not_acknowledged_is_sent_again():
    dest, first = three_lines_then_the_end(fin=True)
    assert dest.flush() == dest.NOT_CONNECTED  # syslog-ng sends the whole batch again
    assert dest.connection is None and dest.resent == [b"one", b"two"]
    assert first.closed == "closed"  # not reset: the log host still reads what it acknowledged
    dest.connection = again = FakeConnection()
    for line in (b"one", b"two", b"three", b"four"):
        assert dest.send(line) == dest.QUEUED
    assert again.written == len(b"threefour") and dest.flush() == dest.SUCCESS


def test_lines_written_before_the_log_host_closed_are_not_sent_again_when_a_write_fails():
    # The log host's FIN came while the batch was being written (acknowledgement not asked yet):
    # what went out before it is read and stored by the log host, so only the rest is resent.
    dest = destination(FakeConnection(acked=6, writable=6))
    assert [dest.send(line) for line in (b"one", b"two")] == [dest.QUEUED] * 2
    assert dest.send(b"three") == dest.NOT_CONNECTED
    assert dest.resent == [b"one", b"two"]


def test_after_a_reset_the_whole_batch_is_sent_again():
    dest, first = three_lines_then_the_end(fin=False)
    assert dest.flush() == dest.NOT_CONNECTED and first.closed == "reset"
    assert dest.resent == []  # acknowledged by the kernel, perhaps not stored: a duplicate beats a loss


def test_a_different_line_ends_the_skipping():
    dest = destination(FakeConnection())
    dest.resent = [b"one", b"two"]
    dest.send(b"one")
    dest.send(b"other")
    dest.send(b"two")
    assert dest.resent == [] and dest.connection.written == len(b"othertwo")
