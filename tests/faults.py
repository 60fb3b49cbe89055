"""Faults on the wire: a proxy between the tool and the server that can cut
a connection at an exact moment of the PostgreSQL protocol.

It listens on a local TCP port and forwards to the server (its Unix
socket, or its TCP port).
Armed, it cuts the first connection whose server has just answered a
replayed tenant script's ``COMMIT``: the tenant's transaction is
committed on the server, and the client sees its connection drop before
it hears so, which is what a network cut or a crash at that moment does.
"""
import os
import socket
import struct
import threading

from sqlalchemy.engine import make_url


class CommitCutter:
    """``with CommitCutter(database_url) as proxy:`` then connect to
    ``proxy.url``; ``proxy.arm()`` cuts the next replayed commit."""

    def __init__(self, database_url):
        url = make_url(database_url)
        host = url.query.get("host") or url.host or "/tmp"
        port = url.port or 5432
        if host.startswith("/"):
            self.upstream = (socket.AF_UNIX,
                             os.path.join(host, f".s.PGSQL.{port}"))
        else:
            self.upstream = (socket.AF_INET, (host, port))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = url.set(
            host="127.0.0.1", port=self._listener.getsockname()[1],
            query={"sslmode": "disable", "gssencmode": "disable"},
        ).render_as_string(hide_password=False)
        self._armed = threading.Event()
        self.cut = threading.Event()
        self._closing = False

    def arm(self):
        self._armed.set()

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self._closing = True
        self._listener.close()

    def _accept(self):
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            family, address = self.upstream
            server = socket.socket(family, socket.SOCK_STREAM)
            server.connect(address)
            threading.Thread(target=self._forward, args=(client, server),
                             daemon=True).start()
            threading.Thread(target=self._watch, args=(server, client),
                             daemon=True).start()

    @staticmethod
    def _forward(source, target):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.close()
                except OSError:
                    pass

    def _watch(self, server, client):
        """Forward the server's messages, looking at each."""
        state = {"buffer": b"", "in_replay": False}
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                state["buffer"] += data
                out, cut = self._messages(state)
                if out:
                    client.sendall(out)
                if cut:
                    self.cut.set()
                    break
        except OSError:
            pass
        finally:
            for sock in (server, client):
                _close(sock)

    def _messages(self, state):
        """The complete messages in the buffer, up to a cut if one is
        due: ``(bytes to forward, cut)``."""
        out = b""
        while len(state["buffer"]) >= 5:
            buffer = state["buffer"]
            kind = buffer[:1]
            length = struct.unpack("!I", buffer[1:5])[0]
            if len(buffer) < 1 + length:
                break
            message, state["buffer"] = buffer[:1 + length], buffer[1 + length:]
            # A replayed script: a step notice, or the guard (a DO block)
            # that opens every tenant's script.
            if (kind == b"N" and b"tenantmigrate step" in message) or (
                    kind == b"C" and message[5:].startswith(b"DO")):
                state["in_replay"] = True
            elif kind == b"Z":
                state["in_replay"] = False
            elif (kind == b"C" and message[5:].startswith(b"COMMIT")
                  and state["in_replay"] and self._armed.is_set()):
                self._armed.clear()
                return out, True
            out += message
        return out, False


def _close(sock):
    for action in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            action()
        except OSError:
            pass
