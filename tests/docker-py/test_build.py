"""docker-py image builds against wharfd's Docker API (run by tests/docker_py.rs).

Environment: DOCKER_HOST, WHARF_TEST_IMAGE, WHARF_TEST_NAME (see test_api.py). Each check
raises on failure; the last line printed is "docker-py build: all checks passed".
Whatever it made is removed at the end, also when a check fails.
"""

import io
import os
import tarfile
import tempfile

import docker
from docker.errors import BuildError

image_ref = os.environ["WHARF_TEST_IMAGE"]
prefix = os.environ["WHARF_TEST_NAME"]

client = docker.from_env()
client.images.pull(image_ref)
made_images = []


def cleanup():
    for name in made_images:
        try:
            client.images.remove(name, force=True)
        except docker.errors.APIError:
            pass


def check():
    tag = f"{prefix}-built:v1"
    with tempfile.TemporaryDirectory() as ctx:
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(
                f"FROM {image_ref}\n"
                "ARG WHO=nobody\n"
                "COPY hello.txt /hello.txt\n"
                "RUN echo \"$WHO\" >> /hello.txt\n"
                "LABEL made.by=docker-py\n"
                'CMD ["cat", "/hello.txt"]\n'
            )
        with open(os.path.join(ctx, "hello.txt"), "w") as f:
            f.write("hello\n")
        # images.build: the path is sent as a tar (docker-py applies .dockerignore).
        image, logs = client.images.build(path=ctx, tag=tag, buildargs={"WHO": "py"}, rm=True)
        made_images.append(tag)
        lines = "".join(entry.get("stream", "") for entry in logs)
        assert "Step 1/6 : FROM" in lines, lines
        assert "Successfully built" in lines, lines
        assert tag in image.tags, image.tags
        assert image.labels.get("made.by") == "docker-py", image.labels
        out = client.containers.run(tag, remove=True)
        assert out == b"hello\npy\n", out
        # A rebuild comes from the cache: the same image.
        again, logs = client.images.build(path=ctx, tag=tag, buildargs={"WHO": "py"})
        assert again.id == image.id, (again.id, image.id)
        assert any("Using cache" in entry.get("stream", "") for entry in logs)

    # A Dockerfile alone as a file object (docker-py wraps it in a tar), a custom
    # Dockerfile name in a tar context.
    dockerfile = io.BytesIO(f"FROM {image_ref}\nRUN echo fileobj > /f\n".encode())
    image, _ = client.images.build(fileobj=dockerfile, tag=f"{prefix}-fileobj")
    made_images.append(f"{prefix}-fileobj")
    assert client.containers.run(image.id, "cat /f", remove=True) == b"fileobj\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = f"FROM {image_ref}\nCMD [\"echo\", \"custom\"]\n".encode()
        info = tarfile.TarInfo("build/Custom.dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image, _ = client.images.build(
        fileobj=buf, custom_context=True, encoding="gzip",
        dockerfile="build/Custom.dockerfile", tag=f"{prefix}-custom",
    )
    made_images.append(f"{prefix}-custom")
    assert client.containers.run(image.id, remove=True) == b"custom\n"

    # A failing RUN is a BuildError with dockerd's message.
    failing = io.BytesIO(f"FROM {image_ref}\nRUN exit 7\n".encode())
    try:
        client.images.build(fileobj=failing)
    except BuildError as err:
        assert "returned a non-zero code: 7" in str(err), str(err)
    else:
        raise AssertionError("a failing RUN built")


try:
    check()
finally:
    cleanup()
print("docker-py build: all checks passed")
