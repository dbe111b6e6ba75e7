"""Joins one guest connection to the metadata service on 127.0.0.1:PORT.

QEMU's guestfwd=...-cmd: starts this once per connection with the connection on stdin, stdout
and stderr, so it runs as a plain script (python -I -S relay.py PORT) on the standard library
alone and never writes anything of its own. It ends when both sides have closed, or after
IDLE_SECONDS without traffic, so no relay outlives its guest.
"""

import select
import socket
import sys

IDLE_SECONDS = 60
CHUNK = 65536


def main() -> None:
    guest = socket.socket(fileno=0)
    service = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    other = {guest: service, service: guest}
    while other:
        readable, _, _ = select.select(list(other), [], [], IDLE_SECONDS)
        if not readable:
            return
        for side in readable:
            data = side.recv(CHUNK)
            if data:
                other[side].sendall(data)
            else:
                other[side].shutdown(socket.SHUT_WR)
                del other[side]


if __name__ == "__main__":
    main()
