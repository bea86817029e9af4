"""A real nginx (Debian's) on a free loopback port serving a folder under /bundles/ only to valid
per-device secure links (edge_fleet/rollout/signed_urls.py): for tests and scripts/bench_fleet.py."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .ports import free_port

NGINX = "/usr/sbin/nginx"
CONF = """
daemon off;
master_process off;
{user}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /bundles/ {{
            secure_link $arg_md5,$arg_expires;
            secure_link_md5 "$secure_link_expires$uri$arg_device {secret}";
            if ($secure_link = "") {{ return 403; }}
            if ($secure_link = "0") {{ return 410; }}
            alias {store}/;
        }}
    }}
}}
"""


class NginxServer:
    """start() -> self; `url` is http://127.0.0.1:PORT; files of `store` are at URL/bundles/NAME."""

    def __init__(self, root: Path, store: Path, secret: str) -> None:
        self.root, self.store, self.secret = Path(root), Path(store), secret
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "NginxServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        user = "user root root;" if os.geteuid() == 0 else ""  # workers read a private test folder
        conf = self.root / "nginx.conf"
        conf.write_text(CONF.format(root=self.root, port=self.port, secret=self.secret, store=self.store, user=user))
        self.proc = subprocess.Popen([NGINX, "-p", str(self.root), "-c", str(conf), "-e", str(self.root / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=1)
            except urllib.error.HTTPError:
                return self  # it answers (404)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> "NginxServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
