"""nginx as the storage backend (WebDAV PUT, static GET) and as a streaming reverse proxy.

Both run as non-daemon masters with their own prefix, config, pid and logs in the bench's temp dir,
one worker each: the proxy then has one process, like the single-threaded s3balance daemon, and the
backend cannot take both cores away from the process being measured.
"""

from __future__ import annotations

import os
import pwd

from bench.procs import LOOPBACK, ServerProcess, free_port

NGINX = "/usr/sbin/nginx"

#: The bucket every path writes into on the backend.
BACKEND_BUCKET = "bench"

#: What an S3 adapter's health probe (HeadBucket or a one-key listing of the bucket) gets: an
#: empty ListObjectsV2 answer, so nginx stands in for an S3 service whose bucket exists.
EMPTY_LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    f"<Name>{BACKEND_BUCKET}</Name><Prefix></Prefix><KeyCount>0</KeyCount>"
    "<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"
)


def nginx_available() -> bool:
    return os.access(NGINX, os.X_OK)


def _user_line() -> str:
    """Workers of a root master would drop to ``nobody`` and could not write the data root."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(0).pw_name};\n"


def _main_section(workdir: str, name: str) -> str:
    temp = os.path.join(workdir, f"{name}-temp")
    for sub in ("proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(temp, sub), exist_ok=True)
    return (
        f"{_user_line()}"
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"pid {workdir}/{name}.pid;\n"
        f"error_log {workdir}/{name}-error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "  access_log off;\n"
        "  sendfile on;\n"
        "  tcp_nopush on;\n"
        "  tcp_nodelay on;\n"
        "  keepalive_requests 1000000;\n"
        "  keepalive_timeout 120s;\n"
        f"  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fastcgi;\n"
        f"  uwsgi_temp_path {temp}/uwsgi;\n"
        f"  scgi_temp_path {temp}/scgi;\n"
    )


class Nginx:
    """One nginx master; :meth:`backend` and :meth:`proxy` build the two kinds the bench runs."""

    def __init__(self, name: str, workdir: str, port: int, config: str) -> None:
        self.name = name
        self.workdir = workdir
        self.port = port
        #: The backend's second port, without ETags on PUT (only set by :meth:`backend`).
        self.plain_port = port
        self.config_path = os.path.join(workdir, f"{name}.conf")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.server = ServerProcess(
            name,
            [NGINX, "-p", workdir, "-c", self.config_path, "-e", f"{workdir}/{name}-error.log"],
            os.path.join(workdir, f"{name}.out"),
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @classmethod
    def backend(cls, workdir: str, data_root: str) -> Nginx:
        """Path-style ``/bucket/key`` PUT, GET, HEAD and DELETE on files under ``data_root``, on
        two ports over the same files.

        ``port`` answers a PUT with an ETag, as every S3 service does, so s3balance takes the
        backend's ETag and hashes nothing. nginx cannot compute an MD5, so the ETag is opaque,
        in the form S3 gives ETags that are not an MD5 (``"<hex>-1"``, as for a one-part
        multipart object); clients then know not to compare it with the bytes' MD5. ``plain_port``
        answers like a plain WebDAV store, without an ETag: there s3balance measures the MD5 of
        every body it sends, to report what S3 would have said.

        The request-body temp dir sits in ``data_root`` so a finished PUT is a rename, not a copy.
        """
        port = free_port()
        plain_port = free_port()
        os.makedirs(os.path.join(data_root, BACKEND_BUCKET), exist_ok=True)
        body_temp = os.path.join(data_root, ".body-temp")
        os.makedirs(body_temp, exist_ok=True)
        storage = (
            f"    root {data_root};\n"
            "    client_max_body_size 0;\n"
            "    client_body_buffer_size 1m;\n"
            "    dav_methods PUT DELETE;\n"
            "    create_full_put_path on;\n"
            "    dav_access user:rw;\n"
            f"    location = /{BACKEND_BUCKET} {{\n"
            "      default_type application/xml;\n"
            f"      return 200 '{EMPTY_LISTING}';\n"
            "    }\n"
        )
        config = _main_section(workdir, "backend") + (
            f"  client_body_temp_path {body_temp};\n"
            "  server {\n"
            f"    listen {LOOPBACK}:{port};\n"
            f"{storage}"
            "    location / {\n"
            "      if ($request_method = PUT) {\n"
            '        add_header ETag "\\"${request_id}-1\\"" always;\n'
            "      }\n"
            "    }\n"
            "  }\n"
            "  server {\n"
            f"    listen {LOOPBACK}:{plain_port};\n"
            f"{storage}"
            "  }\n"
            "}\n"
        )
        backend = cls("backend", workdir, port, config)
        backend.plain_port = plain_port
        return backend

    @property
    def plain_url(self) -> str:
        """The backend's port that answers PUT without an ETag (see :meth:`backend`)."""
        return f"http://{LOOPBACK}:{self.plain_port}"

    @classmethod
    def proxy(cls, workdir: str, upstream_port: int, buffer_size: int = 64 << 10) -> Nginx:
        """A streaming reverse proxy: no request or response buffering, keep-alive upstream.

        :param buffer_size: nginx's one buffer per direction when buffering is off (its defaults
            are a memory page or two); 64 KiB is what Twisted reads from a socket at a time, so
            both proxies move bytes in the same steps.
        """
        port = free_port()
        config = _main_section(workdir, "proxy") + (
            "  upstream storage {\n"
            f"    server {LOOPBACK}:{upstream_port};\n"
            "    keepalive 128;\n"
            "  }\n"
            "  server {\n"
            f"    listen {LOOPBACK}:{port};\n"
            "    client_max_body_size 0;\n"
            f"    client_body_buffer_size {buffer_size};\n"
            "    location / {\n"
            "      proxy_pass http://storage;\n"
            "      proxy_http_version 1.1;\n"
            '      proxy_set_header Connection "";\n'
            "      proxy_set_header Host $http_host;\n"
            "      proxy_request_buffering off;\n"
            "      proxy_buffering off;\n"
            "      proxy_max_temp_file_size 0;\n"
            f"      proxy_buffer_size {buffer_size};\n"
            f"      proxy_buffers 4 {buffer_size};\n"
            f"      proxy_busy_buffers_size {buffer_size};\n"
            "    }\n"
            "  }\n"
            "}\n"
        )
        return cls("proxy", workdir, port, config)

    def start(self, deadline_seconds: float = 10.0) -> None:
        self.server.start()
        self.server.wait_ready(self.port, f"/{BACKEND_BUCKET}", deadline_seconds)

    def stop(self) -> None:
        self.server.stop()
