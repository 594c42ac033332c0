"""docker-py volumes against wharfd's Docker API (run by tests/docker_py.rs).

Environment: DOCKER_HOST, WHARF_TEST_IMAGE, WHARF_TEST_NAME (see test_api.py). Each check
raises on failure; the last line printed is "docker-py volumes: all checks passed".
Whatever it made is removed at the end, also when a check fails.
"""

import os

import docker
from docker.errors import APIError, NotFound

image_ref = os.environ["WHARF_TEST_IMAGE"]
prefix = os.environ["WHARF_TEST_NAME"]

client = docker.from_env()
api = client.api
client.images.pull(image_ref)

made_volumes = []
made_containers = []


def cleanup():
    for name in made_containers:
        try:
            client.containers.get(name).remove(force=True, v=True)
        except NotFound:
            pass
    for name in made_volumes:
        try:
            client.volumes.get(name).remove(force=True)
        except (NotFound, APIError):
            pass


def expect_error(status, wanted, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except APIError as err:
        assert err.status_code == status, (err.status_code, str(err))
        assert wanted in str(err.explanation), (wanted, str(err.explanation))
        return
    raise AssertionError(f"{call.__name__}{args} did not fail")


def check():
    # Create with labels and driver options; get; list with filters.
    name = f"{prefix}-data"
    made_volumes.append(name)
    vol = client.volumes.create(name=name, driver="local", labels={"app": "py"})
    assert vol.name == name, vol.name
    assert vol.attrs["Driver"] == "local", vol.attrs
    assert vol.attrs["Labels"] == {"app": "py"}, vol.attrs
    assert vol.attrs["Scope"] == "local", vol.attrs
    assert vol.attrs["Mountpoint"].endswith(f"/volumes/{name}/_data"), vol.attrs
    assert client.volumes.get(name).attrs["CreatedAt"] == vol.attrs["CreatedAt"]
    tmp = f"{prefix}-tmp"
    made_volumes.append(tmp)
    client.volumes.create(
        name=tmp, driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=2m"}
    )
    assert client.volumes.get(tmp).attrs["Options"]["type"] == "tmpfs"
    listed = [v.name for v in client.volumes.list(filters={"label": "app=py"})]
    assert listed == [name], listed
    listed = {v.name for v in client.volumes.list(filters={"name": prefix})}
    assert listed == {name, tmp}, listed
    listed = {v.name for v in client.volumes.list(filters={"dangling": True})}
    assert {name, tmp} <= listed, listed

    # A container writes to both; the named one keeps the data after it is removed.
    out = client.containers.run(
        image_ref,
        ["sh", "-c", "echo kept > /data/f && sync && grep ' /t ' /proc/mounts"],
        name=f"{prefix}-writer",
        volumes={name: {"bind": "/data", "mode": "rw"}, tmp: {"bind": "/t", "mode": "rw"}},
    )
    made_containers.append(f"{prefix}-writer")
    assert b"tmpfs /t tmpfs" in out, out
    writer = client.containers.get(f"{prefix}-writer")
    mounts = {m["Destination"]: m for m in writer.attrs["Mounts"]}
    assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Name"] == name, mounts
    assert mounts["/data"]["RW"] is True, mounts
    # In use: 409, also with force.
    expect_error(409, "volume is in use", client.volumes.get(name).remove)
    listed = {v.name for v in client.volumes.list(filters={"dangling": False})}
    assert {name, tmp} <= listed, listed
    writer.remove(v=True)
    made_containers.remove(f"{prefix}-writer")
    out = client.containers.run(
        image_ref, ["cat", "/data/f"], remove=True, volumes=[f"{name}:/data:ro"]
    )
    assert out == b"kept\n", out

    # Mounts (the low-level API's types): a read-only bind, a tmpfs, an anonymous volume.
    mounted = client.containers.run(
        image_ref,
        ["sh", "-c", "test -d /anon && grep ' /scratch ' /proc/mounts && cat /ro/f"],
        name=f"{prefix}-mounts",
        mounts=[
            docker.types.Mount("/ro", name, type="volume", read_only=True),
            docker.types.Mount("/scratch", None, type="tmpfs", tmpfs_size=1 << 20),
            docker.types.Mount("/anon", None, type="volume"),
        ],
    )
    made_containers.append(f"{prefix}-mounts")
    assert b"size=1024k" in mounted and mounted.endswith(b"kept\n"), mounted
    c = client.containers.get(f"{prefix}-mounts")
    anon = [m["Name"] for m in c.attrs["Mounts"] if m["Destination"] == "/anon"][0]
    assert len(anon) == 64, anon
    assert client.volumes.get(anon).attrs["Labels"] is None
    c.remove(v=True)
    made_containers.remove(f"{prefix}-mounts")
    expect_error(404, "no such volume", client.volumes.get, anon)

    # Bad input: 4xx naming what was wrong, nothing made.
    before = sorted(v.name for v in client.volumes.list())
    expect_error(400, "includes invalid characters", client.volumes.create, name="no/slash")
    expect_error(400, "volume name is too short", client.volumes.create, name="x")
    expect_error(404, 'plugin "nope" not found', client.volumes.create, name=f"{prefix}-x", driver="nope")
    expect_error(400, 'invalid option: "bogus"', client.volumes.create, name=f"{prefix}-y", driver_opts={"bogus": "1"})
    expect_error(
        400,
        "bind source path does not exist",
        client.containers.create,
        image_ref,
        "true",
        mounts=[docker.types.Mount("/x", "/no/such/wharf/dir", type="bind")],
    )
    expect_error(400, "invalid mode", client.containers.create, image_ref, "true", volumes=["/a:/b:bogus"])
    expect_error(404, "no such volume", client.volumes.get, f"{prefix}-none")
    after = sorted(v.name for v in client.volumes.list())
    assert before == after, (before, after)

    # Prune: unused local volumes without options; the one with options is kept.
    spare = f"{prefix}-spare"
    made_volumes.append(spare)
    client.volumes.create(name=spare)
    pruned = client.volumes.prune(filters={"label": "app=py"})
    assert pruned["VolumesDeleted"] == [name], pruned
    pruned = client.volumes.prune()
    assert spare in pruned["VolumesDeleted"], pruned
    assert tmp not in pruned["VolumesDeleted"], pruned
    assert isinstance(pruned["SpaceReclaimed"], int), pruned
    client.volumes.get(tmp).remove()
    expect_error(404, "no such volume", client.volumes.get, tmp)
    # (docker-py's remove_volume never sends its force: the CLI test checks rm -f.)


try:
    check()
finally:
    cleanup()
print("docker-py volumes: all checks passed")
