"""Write a development config under a local folder (``make run``): SQLite, socket and videos there.

Prints the config path. An existing file is kept, so local edits survive ``make run``.
"""

from __future__ import annotations

import os
import sys

from .config import PRIVATE_UMASK

TEMPLATE = """\
# development config written by `make run`; edit freely, it is not overwritten
database:
  url: sqlite:///{root}/videofetchd.db
  poll_interval: 2s
download:
  directory: {root}/videos
  workers: 2
  # downloads never reach loopback or your LAN unless listed here, e.g. ["192.168.1.20/32"]
  allow_addresses: []
  # yt-dlp's cache (player code, JavaScript challenge results), shared by the workers
  cache_dir: {root}/cache
scan:
  directories: []
control:
  socket: {root}/control.sock
  mode: "0600"
logging:
  level: info
"""


def main(argv: list[str]) -> int:
    root = os.path.abspath(argv[0] if argv else ".run")
    os.umask(PRIVATE_UMASK)  # the folder of the queue, the videos and the socket: not for other users either
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "videofetchd.yaml")
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(TEMPLATE.format(root=root))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
