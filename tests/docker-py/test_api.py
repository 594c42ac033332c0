"""docker-py against wharfd's Docker API (run by tests/docker_py.rs).

Environment: DOCKER_HOST (the wharfd Docker socket), WHARF_TEST_IMAGE (the busybox test
image in a local registry), WHARF_TEST_NAME (a unique name prefix). Each check raises on
failure; the last line printed is "docker-py: all checks passed".
"""

import os
import sys
import time

import docker
from docker.errors import APIError, ImageNotFound, NotFound

image_ref = os.environ["WHARF_TEST_IMAGE"]
prefix = os.environ["WHARF_TEST_NAME"]

client = docker.from_env()
api = client.api

# The version docker-py negotiated, and what the daemon says of itself.
assert api.api_version == "1.41", api.api_version
assert client.ping() is True
info = client.info()
assert info["OSType"] == "linux" and info["CgroupDriver"] == "cgroupfs", info

# Pull, list, inspect.
image = client.images.pull(image_ref)
assert image.id.startswith("sha256:"), image.id
assert image_ref in image.tags, image.tags
assert any(i.id == image.id for i in client.images.list())
assert client.images.get(image_ref).id == image.id

# run() without detach: create, start, wait, then the logs (docker-py's own flow).
output = client.containers.run(
    image_ref,
    ["sh", "-c", "echo out; echo err >&2"],
    name=f"{prefix}-run",
    stdout=True,
    stderr=True,
    environment={"A": "1"},
)
assert output == b"out\nerr\n", output
ran = client.containers.get(f"{prefix}-run")
assert ran.status == "exited", ran.status
assert ran.attrs["State"]["ExitCode"] == 0
ran.remove()

# A failing command: ContainerError with the exit status.
try:
    client.containers.run(image_ref, ["sh", "-c", "exit 7"], name=f"{prefix}-fail")
    raise AssertionError("a failing command did not raise")
except docker.errors.ContainerError as err:
    assert err.exit_status == 7, err.exit_status
client.containers.get(f"{prefix}-fail").remove()

# Detached, with labels and limits; logs, filters, stop, wait, remove.
container = client.containers.run(
    image_ref,
    ["sh", "-c", "echo ready; exec sleep 600"],
    name=f"{prefix}-bg",
    detach=True,
    labels={"suite": prefix},
    mem_limit="64m",
    pids_limit=32,
)
container.reload()
assert container.status == "running", container.status
assert container.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
assert container.attrs["HostConfig"]["PidsLimit"] == 32
listed = client.containers.list(filters={"label": f"suite={prefix}"})
assert [c.id for c in listed] == [container.id], listed
for _ in range(50):
    if container.logs() == b"ready\n":
        break
    import time

    time.sleep(0.1)
assert container.logs() == b"ready\n", container.logs()
assert container.logs(timestamps=True).split(b" ", 1)[1] == b"ready\n"
container.stop(timeout=1)
assert container.wait()["StatusCode"] == 137
container.reload()
assert container.status == "exited"
container.remove()
try:
    client.containers.get(container.id)
    raise AssertionError("a removed container was found")
except NotFound:
    pass

# exec_run: output, exit codes, environment and workdir, demuxed streams, a stream.
execer = client.containers.run(image_ref, ["sleep", "600"], name=f"{prefix}-exec", detach=True)
result = execer.exec_run(["sh", "-c", "echo $X $(pwd); exit 3"], environment={"X": "y"}, workdir="/tmp")
assert result.exit_code == 3 and result.output == b"y /tmp\n", result
result = execer.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
assert result.exit_code == 0 and result.output == (b"out\n", b"err\n"), result
result = execer.exec_run(["sh", "-c", "for i in 1 2 3; do echo $i; done"], stream=True)
assert b"".join(result.output) == b"1\n2\n3\n", result
exec_id = api.exec_create(execer.id, ["sh", "-c", "exit 7"])["Id"]
api.exec_start(exec_id)
assert api.exec_inspect(exec_id)["ExitCode"] == 7, api.exec_inspect(exec_id)
try:
    api.exec_start(exec_id)
    raise AssertionError("an exec started twice")
except APIError as err:
    assert err.status_code == 409, err.status_code
execer.remove(force=True)

# Errors carry dockerd's statuses.
try:
    client.containers.get("no-such-container")
    raise AssertionError("no error for a missing container")
except NotFound as err:
    assert "No such container: no-such-container" in str(err), str(err)
blocker = client.containers.create(image_ref, ["true"], name=f"{prefix}-dup")
try:
    client.containers.create(image_ref, ["true"], name=f"{prefix}-dup")
    raise AssertionError("a taken name was accepted")
except APIError as err:
    assert err.status_code == 409, err.status_code
blocker.remove()
try:
    client.images.get("absent-image:1")
    raise AssertionError("a missing image was found")
except ImageNotFound:
    pass

# The container filesystem: diff (dockerd's kinds), commit (the new image runs with the
# changes and its new CMD), and the pruning of what is left.
fs = client.containers.run(
    image_ref,
    ["sh", "-c", "echo hi > /hello; rm /etc/group; exec sleep 600"],
    name=f"{prefix}-fs",
    detach=True,
)
changes = {}
for _ in range(100):
    changes = {c["Path"]: c["Kind"] for c in fs.diff() or []}
    if "/hello" in changes and "/etc/group" in changes:
        break
    time.sleep(0.1)
assert changes == {"/etc": 0, "/etc/group": 2, "/hello": 1}, changes
committed = fs.commit(
    repository=f"{prefix}/committed",
    tag="v1",
    message="from docker-py",
    author="docker-py",
    changes=['CMD ["cat", "/hello"]', "ENV FROM=py"],
)
assert committed.id.startswith("sha256:"), committed.id
assert f"{prefix}/committed:v1" in committed.tags, committed.tags
assert committed.attrs["Comment"] == "from docker-py", committed.attrs["Comment"]
assert committed.attrs["Author"] == "docker-py", committed.attrs["Author"]
assert "FROM=py" in committed.attrs["Config"]["Env"], committed.attrs["Config"]
assert client.containers.run(committed.id, remove=True) == b"hi\n"
fs.remove(force=True)
client.images.remove(committed.id)
pruned = client.containers.prune()
assert pruned["SpaceReclaimed"] >= 0, pruned
usage = client.df()
assert usage["Volumes"] == [] and usage["Images"][0]["Containers"] >= 0, usage

# save() and images.load(): docker save / docker load, a round trip.
saved = b"".join(image.save(named=True))
client.images.remove(image_ref)
try:
    client.images.get(image_ref)
    raise AssertionError("a removed image was found")
except ImageNotFound:
    pass
loaded = client.images.load(saved)
assert [i.id for i in loaded] == [image.id], loaded
assert image_ref in client.images.get(image_ref).tags
# Saved by ID, the archive names no tag: "Loaded image ID".
by_id = b"".join(image.save())
assert [i.id for i in client.images.load(by_id)] == [image.id]
# A broken archive is an error naming what is wrong.
try:
    client.images.load(b"not an archive" * 100)
    raise AssertionError("a broken archive was loaded")
except APIError as err:
    assert err.status_code == 400, err.status_code
    assert "reading the archive" in str(err), str(err)

# Tag and remove images.
assert image.tag(f"{prefix}/copy", "v1") is True
client.images.remove(f"{prefix}/copy:v1")
client.images.remove(image_ref)
assert client.images.list() == []

print("docker-py: all checks passed")
sys.exit(0)
