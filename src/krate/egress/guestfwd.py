"""QEMU's guestfwd command: one guest connection relayed to krate's egress proxy socket.

Run by QEMU (user-mode networking, `guestfwd=...-cmd:`) once per connection the
guest opens to the proxy address, with that connection as stdin and stdout:
`python -I -S guestfwd.py SOCKET`. Standard library only, and it decides
nothing: the proxy behind the socket decides and records every connection.
"""

import os
import selectors
import socket
import sys


def main() -> int:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(sys.argv[1])
    except OSError:
        return 1
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "in")
    sel.register(upstream, selectors.EVENT_READ, "up")
    open_ends = 2
    while open_ends:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(0, 65536)
                if data:
                    upstream.sendall(data)
                    continue
                sel.unregister(0)
                upstream.shutdown(socket.SHUT_WR)
            else:
                data = upstream.recv(65536)
                if data:
                    _write_all(1, data)
                    continue
                sel.unregister(upstream)
                os.close(1)
                if open_ends == 2:  # the proxy is done: so is the guest's connection
                    return 0
            open_ends -= 1
    return 0


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, KeyboardInterrupt):
        sys.exit(1)
