"""docker-py's network API against wharfd (run by tests/docker_py.rs): create with IPAM,
list with filters, run on the network with an alias, connect with a static address,
name resolution through the embedded DNS, disconnect, remove (409 while in use).

Environment: DOCKER_HOST, WHARF_TEST_IMAGE, WHARF_TEST_NAME, WHARF_TEST_SUBNET (a /24
of this test: traffic stays on its own bridge). The last line printed is
"docker-py networks: all checks passed".
"""

import os

import docker
from docker.errors import APIError, NotFound
from docker.types import IPAMConfig, IPAMPool

image_ref = os.environ["WHARF_TEST_IMAGE"]
prefix = os.environ["WHARF_TEST_NAME"]
subnet = os.environ["WHARF_TEST_SUBNET"]
base = subnet.rsplit(".", 1)[0]

client = docker.from_env()
client.images.pull(image_ref)
made = []
network = None
try:
    ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet, gateway=f"{base}.1")])
    network = client.networks.create(
        f"{prefix}-net", driver="bridge", ipam=ipam, labels={"suite": prefix}, check_duplicate=True
    )
    assert network.attrs["IPAM"]["Config"][0]["Subnet"] == subnet, network.attrs
    listed = client.networks.list(filters={"label": f"suite={prefix}"})
    assert [n.id for n in listed] == [network.id], listed
    assert client.networks.get(f"{prefix}-net").id == network.id

    server = client.containers.run(
        image_ref, ["sleep", "300"], name=f"{prefix}-srv", detach=True, network=f"{prefix}-net"
    )
    made.append(server)
    other = client.containers.run(image_ref, ["sleep", "300"], name=f"{prefix}-cli", detach=True)
    made.append(other)
    network.connect(other, ipv4_address=f"{base}.99", aliases=["peer"])
    network.reload()
    members = {c.name for c in network.containers}
    assert members == {f"{prefix}-srv", f"{prefix}-cli"}, members
    other.reload()
    assert other.attrs["NetworkSettings"]["Networks"][f"{prefix}-net"]["IPAddress"] == f"{base}.99"

    code, out = server.exec_run(["nslookup", "peer"])
    assert code == 0 and f"{base}.99" in out.decode(), out

    try:
        network.remove()
        raise AssertionError("a network in use was removed")
    except APIError as err:
        assert err.status_code == 409 and "has active endpoints" in str(err), err

    network.disconnect(other)
    code, out = server.exec_run(["nslookup", "peer"])
    assert f"{base}.99" not in out.decode(), out
    for c in made:
        c.remove(force=True)
    made.clear()
    network.remove()
    network = None
    try:
        client.networks.get(f"{prefix}-net")
        raise AssertionError("the removed network is still there")
    except NotFound:
        pass
finally:
    for c in made:
        c.remove(force=True)
    if network is not None:
        network.remove()

print("docker-py networks: all checks passed")
