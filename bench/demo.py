"""``make demo``: watch videofetchd work on a machine without internet.

Starts the test media server (throttled, so progress is visible), a daemon on a throwaway
config under .run/demo/, queues a few IDs (one stalls mid-download, one is a 404) and prints
``videofetchctl status`` every second until the queue has drained, then stops the daemon.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mediaserver import MediaServer  # noqa: E402

CONFIG = """\
database: {{url: "sqlite:///{dir}/queue.db", poll_interval: 1s}}
download:
  directory: {dir}/videos
  url_template: "{template}"
  workers: 3
  stall_timeout: 4s
  kill_grace: 1s
  retry_backoff: 1s
  allow_addresses: ["127.0.0.0/8", "::1/128"]  # the demo's media server is on loopback
control: {{socket: {dir}/control.sock}}
"""


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "videofetchd", *args, "--config", str(config)],
                          capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    args = ap.parse_args()
    demo = ROOT / ".run" / "demo"
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    with MediaServer(default_size=2 * 1024 * 1024, rate_bps=512 * 1024) as server:
        server.configure("stall-demo", size=1024 * 1024, stall_after=300 * 1024)
        config = demo / "videofetchd.yaml"
        config.write_text(CONFIG.format(dir=demo, template=server.url_template))
        log = open(demo / "daemon.log", "w")
        daemon = subprocess.Popen([sys.executable, "-m", "videofetchd", "--config", str(config)],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while ctl(config, "status").returncode != 0:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print((demo / "daemon.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.2)
            ids = [f"demo-{i:02d}" for i in range(args.videos)] + ["stall-demo", "e404-demo"]
            print(ctl(config, "add", *ids).stdout)
            while True:
                st = ctl(config, "status")
                print("\x1b[2J\x1b[H" + st.stdout if sys.stdout.isatty() else st.stdout, flush=True)
                q = ctl(config, "list", "--status", "queued").stdout + ctl(config, "list", "--status", "running").stdout
                if not q.strip():
                    break
                time.sleep(1)
            print(ctl(config, "list").stdout)
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(60)
            log.close()
    print(f"daemon exited with {code}; its log is {demo / 'daemon.log'}, the videos are in {demo / 'videos'}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
