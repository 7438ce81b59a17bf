"""A real nginx in front of test servers, running the production config in deploy/nginx/.

The site file (deploy/nginx/longcat.conf) is rendered for the test: loopback ports instead of 80
and 443, the test's replicas in the upstream, a self-signed certificate, logs and temporary files
under the test's own prefix directory. Everything else (the proxy settings of longcat-proxy.conf,
the failover rules, the timeouts) is used as shipped. A second, plain-HTTP server includes the
same proxy settings, for load tests that need no TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import REPO, free_port

DEPLOY = REPO / "deploy" / "nginx"
SERVER_NAME = "llm.example.com"


def nginx_binary() -> str | None:
    """The nginx executable (Debian's package puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def self_signed_cert(directory: Path, names: tuple[str, ...] = (SERVER_NAME, "localhost")) -> tuple[Path, Path]:
    """A certificate for `names` and 127.0.0.1, signed by its own key: (certificate, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _sub(pattern: str, repl, text: str, what: str) -> str:
    """`re.sub` that fails loudly when the shipped config no longer has what the test replaces."""
    out, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if not n:
        raise AssertionError(f"deploy/nginx/longcat.conf: no {what} to adapt for the test ({pattern!r})")
    return out


def render_site(replica_ports: list[int], http_port: int, https_port: int, cert: Path, key: Path, logs: Path) -> str:
    """deploy/nginx/longcat.conf with the test's ports, replicas, certificate and log directory."""
    text = (DEPLOY / "longcat.conf").read_text()
    servers = re.findall(r"^(\s*)server 127\.0\.0\.1:\d+((?: [^;]*)?);\n", text, flags=re.MULTILINE)
    if not servers:
        raise AssertionError("deploy/nginx/longcat.conf: no `server 127.0.0.1:PORT …;` line in the upstream")
    indent, options = servers[0]
    ours = "".join(f"{indent}server 127.0.0.1:{p}{options};\n" for p in replica_ports)
    text = re.sub(r"^\s*server 127\.0\.0\.1:\d+(?: [^;]*)?;\n", "", text, flags=re.MULTILINE)
    text = _sub(r"^(\s*)(least_conn;\n)", lambda m: m.group(1) + m.group(2) + ours, text, "least_conn in the upstream")
    text = _sub(r"^\s*listen \[::\]:\d+[^;]*;\n", "", text, "IPv6 listen lines")
    text = _sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", text, "listen 80")
    text = _sub(r"listen 443 ", f"listen 127.0.0.1:{https_port} ", text, "listen 443")
    text = _sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text, "ssl_certificate")
    text = _sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", text, "ssl_certificate_key")
    text = _sub(r"include /etc/nginx/snippets/longcat-proxy\.conf;", f"include {DEPLOY / 'longcat-proxy.conf'};", text, "the snippet include")
    return _sub(r"/var/log/nginx/", f"{logs}/", text, "log paths")


@dataclass
class Nginx:
    """nginx as a foreground process of the test (not a daemon), with its own prefix directory."""

    prefix: Path
    replica_ports: list[int]
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    plain_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    cert: Path | None = None

    def __post_init__(self) -> None:
        self.binary = nginx_binary()
        if self.binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
        for sub in ("logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed_cert(self.prefix / "tls")
        site = render_site(self.replica_ports, self.http_port, self.https_port, self.cert, key, self.prefix / "logs")
        (self.prefix / "longcat.conf").write_text(site)
        p = self.prefix
        # Started as root, workers would run as `nobody`, which cannot enter pytest's private tmp dirs.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (p / "nginx.conf").write_text(
            f"""{user}daemon off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {p}/logs/access.log;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    include {p}/longcat.conf;
    # Plain HTTP with the same proxy settings, for the load tests.
    server {{
        listen 127.0.0.1:{self.plain_port};
        include {DEPLOY / 'longcat-proxy.conf'};
    }}
}}
"""
        )

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def plain_url(self) -> str:
        return f"http://127.0.0.1:{self.plain_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the rendered configuration."""
        return subprocess.run([self.binary, "-t", "-p", str(self.prefix), "-c", str(self.conf)], capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 10) -> Nginx:
        out = open(self.prefix / "logs" / "stderr.log", "w")
        self.proc = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.plain_port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.prefix / "logs" / name
            if path.exists():
                parts.append(path.read_text()[-5000:])
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown of the master and its worker
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
