"""docker-py: published ports against wharfd (run by tests/docker_ports.rs).

Environment: DOCKER_HOST, WHARF_TEST_IMAGE (busybox in a local registry),
WHARF_TEST_NAME (a unique name prefix). The container is removed even when a check
fails; the last line printed is "docker-py ports: all checks passed".
"""

import os
import socket
import time

import docker

image_ref = os.environ["WHARF_TEST_IMAGE"]
prefix = os.environ["WHARF_TEST_NAME"]

client = docker.from_env()
client.images.pull(image_ref)


def fetch(port):
    """GET /index.html from 127.0.0.1:port, retrying while httpd starts."""
    deadline = time.time() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
                conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                data = b""
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            if b" 200 " in data:
                return data.split(b"\r\n\r\n", 1)[1].strip()
        except OSError:
            pass
        if time.time() > deadline:
            raise AssertionError(f"no answer on 127.0.0.1:{port}")
        time.sleep(0.1)


container = client.containers.run(
    image_ref,
    ["sh", "-c", "mkdir /www && echo hello-py > /www/index.html && exec httpd -f -p 8080 -h /www"],
    name=f"{prefix}-web",
    ports={"8080/tcp": None},
    detach=True,
)
try:
    container.reload()
    bindings = container.ports["8080/tcp"]
    assert len(bindings) == 1, container.ports
    assert bindings[0]["HostIp"] == "0.0.0.0", bindings
    port = int(bindings[0]["HostPort"])
    first, last = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert first <= port <= last, (port, first, last)
    assert fetch(port) == b"hello-py"
    # The low-level API says the same.
    assert client.api.port(container.id, 8080) == bindings, client.api.port(container.id, 8080)
    listed = client.api.containers(filters={"name": f"{prefix}-web"})[0]["Ports"]
    assert listed == [{"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": port, "Type": "tcp"}], listed
finally:
    container.remove(force=True)

print("docker-py ports: all checks passed")
