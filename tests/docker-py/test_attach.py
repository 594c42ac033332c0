"""docker-py: attach with logs (the log replayed, then the live output, each line once),
several clients at once, and detach keys on a raw attach and exec socket (run by
tests/docker_py.rs).

Environment: DOCKER_HOST, WHARF_TEST_IMAGE, WHARF_TEST_NAME (as test_api.py). Each
check raises on failure; the last line printed is "docker-py attach: all checks passed".
"""

import os
import socket
import threading
import time

import docker
from docker.errors import APIError, NotFound

image_ref = os.environ["WHARF_TEST_IMAGE"]
prefix = os.environ["WHARF_TEST_NAME"]

client = docker.from_env()
api = client.api
made = []


def run(name, cmd, **kwargs):
    container = client.containers.run(
        image_ref, cmd, name=f"{prefix}-{name}", detach=True, **kwargs
    )
    made.append(container.id)
    return container


def wait_for(what, check, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def raw(sock):
    """The socket under what attach_socket / exec_start(socket=True) return."""
    return getattr(sock, "_sock", sock)


def read_until_closed(sock, timeout=10):
    """Reads until the daemon closes the connection; what came."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def checks():
    # An exited container: logs=True, stream=False is its whole log, per stream.
    done = run(
        "done",
        ["sh", "-c", "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three"],
    )
    assert done.wait()["StatusCode"] == 0
    out = done.attach(stdout=True, stderr=True, logs=True, stream=False)
    assert out == b"one\ntwo\nthree\n", out
    assert done.attach(stdout=True, stderr=False, logs=True) == b"one\nthree\n"
    assert done.attach(stdout=False, stderr=True, logs=True) == b"two\n"
    # logs and stream on an exited container (as dockerd 20.10): the log, then the
    # stream waits for the next run, carries it, and ends at its exit.
    got = []

    def follow():
        for chunk in done.attach(stdout=True, stderr=True, logs=True, stream=True):
            got.append(chunk)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for("the log replayed", lambda: b"".join(got) == b"one\ntwo\nthree\n")
    time.sleep(0.5)
    assert reader.is_alive(), "the stream ended before the next run"
    done.start()
    reader.join(15)
    assert not reader.is_alive(), "the stream did not end with the next run"
    assert b"".join(got) == b"one\ntwo\nthree\n" * 2, got

    # A running container: logs=True, stream=False is what it logged so far, at once.
    sleeper = run("sleeper", ["sh", "-c", "echo first; exec sleep 600"])
    wait_for("the first line", lambda: sleeper.logs() == b"first\n")
    started = time.time()
    assert sleeper.attach(logs=True, stream=False) == b"first\n"
    assert time.time() - started < 5, "stream=0 waited for the container"

    # logs and stream while it writes: every line once, none lost, none twice, even
    # those written while the attach began.
    counter = run(
        "counter",
        [
            "sh",
            "-c",
            "i=0; while [ $i -lt 40 ]; do echo line$i; i=$((i+1)); sleep 0.05; done",
        ],
    )
    wait_for("a few lines", lambda: counter.logs().count(b"\n") >= 5)
    data = b"".join(counter.attach(stdout=True, stderr=True, logs=True, stream=True))
    expected = b"".join(f"line{i}\n".encode() for i in range(40))
    assert data == expected, data

    # A TTY: the start of a line not logged yet (a prompt) is shown once.
    prompt = run(
        "prompt",
        ["sh", "-c", "echo hello; printf 'name? '; read n; echo \"hi $n\"; sleep 600"],
        tty=True,
        stdin_open=True,
    )
    wait_for("the prompt's line", lambda: prompt.logs() == b"hello\r\n")
    time.sleep(0.3)
    sock = api.attach_socket(
        prompt.id, params={"stdin": 1, "stdout": 1, "stream": 1, "logs": 1}
    )
    sock = raw(sock)
    sock.settimeout(10)
    seen = b""
    while b"name? " not in seen:
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    assert seen == b"hello\r\nname? ", seen
    sock.sendall(b"bob\n")
    while b"hi bob" not in seen:
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    # the terminal's echo, then the answer, once each
    assert seen.startswith(b"hello\r\nname? bob\r\nhi bob"), seen
    sock.close()

    # Several clients attached at once all get the output.
    later = run("later", ["sh", "-c", "sleep 3; echo a; echo b >&2; sleep 1"])
    results = [None, None]

    def attach(index):
        chunks = later.attach(stdout=True, stderr=True, stream=True)
        results[index] = b"".join(chunks)

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == [b"a\nb\n", b"a\nb\n"], results

    # Detach keys (the daemon's side: one raw write with the whole sequence): the
    # attach ends, the container runs on, its stdin still open; a key that starts the
    # sequence without the rest reaches the container.
    # (StdinOnce as `docker run -it` sets it; docker-py's create has no such argument)
    target = api.create_container_from_config(
        {
            "Image": image_ref,
            "Cmd": [
                "sh",
                "-c",
                "read a; echo \"a=$a\" >> /tmp/log; read b; echo \"b=$b\" >> /tmp/log; "
                "exec sleep 600",
            ],
            "Tty": True,
            "OpenStdin": True,
            "StdinOnce": True,
            "AttachStdin": True,
        },
        name=f"{prefix}-keys",
    )
    made.append(target["Id"])
    api.start(target)
    sock = raw(
        api.attach_socket(
            target,
            params={"stdin": 1, "stdout": 1, "stream": 1, "detachKeys": "ctrl-a,b"},
        )
    )
    sock.sendall(b"x\x01y\n")
    time.sleep(0.3)
    sock.sendall(b"\x01b")
    read_until_closed(sock)
    sock.close()
    keys = client.containers.get(target["Id"])
    assert keys.status == "running", keys.status
    log = wait_for(
        "the first line",
        lambda: (lambda r: r.output if b"a=" in r.output else None)(
            keys.exec_run(["cat", "/tmp/log"])
        ),
    )
    assert log == b"a=x\x01y\n", log
    # dockerd's default keys, ctrl-p ctrl-q, on the next attach.
    sock = raw(api.attach_socket(target, params={"stdin": 1, "stdout": 1, "stream": 1}))
    sock.sendall(b"second\n\x10\x11")
    read_until_closed(sock)
    sock.close()
    log = wait_for(
        "the second line",
        lambda: (lambda r: r.output if b"b=" in r.output else None)(
            keys.exec_run(["cat", "/tmp/log"])
        ),
    )
    assert log == b"a=x\x01y\nb=second\n", log
    keys.reload()
    assert keys.status == "running", keys.status

    # Malformed keys: dockerd's 400, for attach and exec.
    try:
        api.attach_socket(target, params={"stdin": 1, "stream": 1, "detachKeys": "ctrl-"})
        raise AssertionError("bad detach keys were taken")
    except APIError as err:
        assert err.status_code == 400, err
        assert "Invalid detach keys (ctrl-) provided" in str(err.explanation), err
    try:
        api.exec_create(target, ["true"], detach_keys="ctrl-1")
        raise AssertionError("bad exec detach keys were taken")
    except APIError as err:
        assert err.status_code == 400, err
        assert "Invalid escape keys (ctrl-1) provided" in str(err.explanation), err

    # exec with a TTY: the keys end the stream, the process runs on and its end is
    # recorded.
    exec_id = api.exec_create(
        target,
        ["sh", "-c", "read l; echo \"x$l\" > /tmp/exec; sleep 2"],
        stdin=True,
        tty=True,
        detach_keys="ctrl-e,e",
    )["Id"]
    sock = raw(api.exec_start(exec_id, tty=True, socket=True))
    sock.sendall(b"hello\n")
    time.sleep(0.3)
    sock.sendall(b"\x05e")
    read_until_closed(sock)
    sock.close()
    assert api.exec_inspect(exec_id)["Running"] is True
    wait_for("the exec's end", lambda: api.exec_inspect(exec_id)["Running"] is False)
    assert api.exec_inspect(exec_id)["ExitCode"] == 0
    assert keys.exec_run(["cat", "/tmp/exec"]).output == b"xhello\n"

    # No such container.
    try:
        api.attach("nothing-here", logs=True)
        raise AssertionError("attach to nothing worked")
    except NotFound as err:
        assert "No such container: nothing-here" in str(err.explanation), err


try:
    checks()
finally:
    for container_id in made:
        try:
            client.containers.get(container_id).remove(force=True)
        except NotFound:
            pass

print("docker-py attach: all checks passed")
