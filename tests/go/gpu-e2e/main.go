// gpu-e2e proves GPU access through wharfd end to end, for e2e/gpu.sh (which writes
// the CDI spec, starts wharfd and hands this program its sockets). It:
//   - builds a minimal image from host files (glibc and the test programs, at their
//     host paths) and loads it with POST /images/load;
//   - runs `nvidia-smi -L` in a CRI pod + container with CDI_devices nvidia.com/gpu=all;
//   - runs it again through the Docker API with `--gpus all` (DeviceRequests);
//   - runs the CUDA vector addition when one was built;
//   - runs a container without the device, which must see no GPU;
//   - on a cgroup v2 host: memory, pids and CPU limits as the container sees them,
//     and an OOM kill reported in State.OOMKilled.
//
// It prints what each container printed and one PASS/FAIL line per check, and exits 1
// when a check failed.
//
//	gpu-e2e -cri SOCK -docker SOCK -logs DIR -files /bin/sh,/lib/x86_64-linux-gnu/libc.so.6,... [-cuda /path/vector-add]
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const imageName = "wharf-gpu-e2e:latest"

var failed bool

func check(name string, ok bool, detail string) {
	if ok {
		fmt.Printf("PASS %s\n", name)
	} else {
		failed = true
		fmt.Printf("FAIL %s: %s\n", name, detail)
	}
}

func fatal(step string, err error) {
	fmt.Printf("FAIL %s: %v\n", step, err)
	os.Exit(1)
}

// imageParts is the layer (a tar holding `files` at their host paths, symlinks
// followed, plus empty /tmp, /dev, /proc, /sys) and the config of the test image.
func imageParts(files []string, cuda string) ([]byte, []byte, error) {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	dirs := map[string]bool{}
	addDir := func(dir string) error {
		var parts []string
		for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
			parts = append([]string{d}, parts...)
		}
		for _, d := range parts {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			mode := int64(0o755)
			if d == "/tmp" {
				mode = 0o1777
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: mode}); err != nil {
				return err
			}
		}
		return nil
	}
	addFile := func(host, inImage string) error {
		data, err := os.ReadFile(host)
		if err != nil {
			return err
		}
		info, err := os.Stat(host)
		if err != nil {
			return err
		}
		if err := addDir(filepath.Dir(inImage)); err != nil {
			return err
		}
		return writeFile(tw, inImage, data, int64(info.Mode().Perm()))
	}
	for _, d := range []string{"/tmp", "/dev", "/proc", "/sys", "/etc", "/usr/local/nvidia/lib64"} {
		if err := addDir(d); err != nil {
			return nil, nil, err
		}
	}
	for _, f := range files {
		if f == "" {
			continue
		}
		if err := addFile(f, f); err != nil {
			return nil, nil, fmt.Errorf("adding %s: %w", f, err)
		}
	}
	if cuda != "" {
		if err := addFile(cuda, "/usr/local/bin/vector-add"); err != nil {
			return nil, nil, fmt.Errorf("adding %s: %w", cuda, err)
		}
	}
	if err := writeFile(tw, "/etc/passwd", []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644); err != nil {
		return nil, nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, nil, err
	}
	digest := sha256.Sum256(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": goArch(),
		"os":           "linux",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(digest[:])}},
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
			"Cmd": []string{"/bin/sh"},
		},
	})
	return layer.Bytes(), config, nil
}

// dockerArchive is what `docker save` writes, for POST /images/load.
func dockerArchive(layer, config []byte) ([]byte, error) {
	manifest, _ := json.Marshal([]map[string]any{{
		"Config": "config.json", "RepoTags": []string{imageName}, "Layers": []string{"layer.tar"},
	}})
	var archive bytes.Buffer
	aw := tar.NewWriter(&archive)
	for _, entry := range []struct {
		name string
		data []byte
	}{{"layer.tar", layer}, {"config.json", config}, {"manifest.json", manifest}} {
		if err := writeFile(aw, entry.name, entry.data, 0o644); err != nil {
			return nil, err
		}
	}
	if err := aw.Close(); err != nil {
		return nil, err
	}
	return archive.Bytes(), nil
}

func writeFile(tw *tar.Writer, name string, data []byte, mode int64) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(name, "/"), Mode: mode, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

func goArch() string {
	out, err := os.ReadFile("/proc/sys/kernel/arch")
	if err == nil && strings.TrimSpace(string(out)) == "aarch64" {
		return "arm64"
	}
	return "amd64"
}

// docker is a Docker API client on a UNIX socket.
type docker struct{ http *http.Client }

func newDocker(socket string) *docker {
	return &docker{http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}, Timeout: 5 * time.Minute}}
}

func (d *docker) call(method, path string, body []byte, contentType string) (int, []byte, error) {
	req, err := http.NewRequest(method, "http://wharf/v1.41"+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// run creates, starts and waits for a container; returns its exit code, its output
// (stdout and stderr, demultiplexed) and its inspect JSON, then removes it.
func (d *docker) run(cmd []string, hostConfig map[string]any) (int, string, map[string]any, error) {
	hostConfig["NetworkMode"] = "none"
	body, _ := json.Marshal(map[string]any{"Image": imageName, "Cmd": cmd, "HostConfig": hostConfig})
	status, data, err := d.call("POST", "/containers/create", body, "application/json")
	if err != nil {
		return 0, "", nil, fmt.Errorf("create: %v", err)
	}
	if status != 201 {
		// Refused (or the command cannot run: wharf, like runc, finds out at create).
		return -1, fmt.Sprintf("create: %d %s\n", status, data), nil, nil
	}
	var created struct{ Id string }
	if err := json.Unmarshal(data, &created); err != nil {
		return 0, "", nil, err
	}
	defer d.call("DELETE", "/containers/"+created.Id+"?force=1", nil, "")
	status, data, err = d.call("POST", "/containers/"+created.Id+"/start", nil, "")
	if err != nil {
		return 0, "", nil, fmt.Errorf("start: %v", err)
	}
	if status != 204 {
		return -1, fmt.Sprintf("start: %d %s\n", status, data), nil, nil
	}
	if status, data, err = d.call("POST", "/containers/"+created.Id+"/wait", nil, ""); err != nil || status != 200 {
		return 0, "", nil, fmt.Errorf("wait: %d %s %v", status, data, err)
	}
	var waited struct{ StatusCode int }
	_ = json.Unmarshal(data, &waited)
	_, logs, err := d.call("GET", "/containers/"+created.Id+"/logs?stdout=1&stderr=1", nil, "")
	if err != nil {
		return 0, "", nil, err
	}
	_, inspectData, _ := d.call("GET", "/containers/"+created.Id+"/json", nil, "")
	var inspect map[string]any
	_ = json.Unmarshal(inspectData, &inspect)
	return waited.StatusCode, demux(logs), inspect, nil
}

// demux joins the frames of a non-TTY log stream (8-byte headers).
func demux(stream []byte) string {
	var out strings.Builder
	for len(stream) >= 8 {
		size := int(binary.BigEndian.Uint32(stream[4:8]))
		if 8+size > len(stream) {
			break
		}
		out.Write(stream[8 : 8+size])
		stream = stream[8+size:]
	}
	return out.String()
}

// serveRegistry serves the image read-only on a loopback port (the CRI pulls; its
// images are not the Docker API's), as an OCI manifest with one gzip layer; returns
// host:port.
func serveRegistry(layer, config []byte) (string, error) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(layer); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	digest := func(data []byte) string {
		sum := sha256.Sum256(data)
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	blobs := map[string][]byte{digest(gz.Bytes()): gz.Bytes(), digest(config): config}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
		"layers": []map[string]any{{
			"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(gz.Bytes()), "size": gz.Len(),
		}},
	})
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		switch {
		case path == "/v2/":
			w.WriteHeader(200)
		case strings.HasPrefix(path, "/v2/gpu-e2e/manifests/"):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", digest(manifest))
			w.Header().Set("Content-Length", fmt.Sprint(len(manifest)))
			if r.Method != http.MethodHead {
				w.Write(manifest)
			}
		case strings.HasPrefix(path, "/v2/gpu-e2e/blobs/"):
			blob, ok := blobs[strings.TrimPrefix(path, "/v2/gpu-e2e/blobs/")]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Length", fmt.Sprint(len(blob)))
			if r.Method != http.MethodHead {
				w.Write(blob)
			}
		default:
			http.NotFound(w, r)
		}
	})
	go http.Serve(listener, mux)
	return listener.Addr().String(), nil
}

func criNvidiaSmi(ctx context.Context, socket, logs, image string) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fatal("CRI dial", err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	pulled, err := runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}})
	if err != nil {
		fatal("CRI PullImage "+image, err)
	}
	fmt.Printf("--- CRI PullImage %s: %s\n", image, pulled.ImageRef)
	name := fmt.Sprintf("gpu-e2e-%d", os.Getpid())
	podConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "default"},
		Hostname:     name,
		LogDirectory: logs,
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig})
	if err != nil {
		fatal("RunPodSandbox", err)
	}
	defer rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId})
	defer rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId})
	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata:   &runtimeapi.ContainerMetadata{Name: "nvidia-smi"},
			Image:      &runtimeapi.ImageSpec{Image: image},
			Command:    []string{"nvidia-smi", "-L"},
			LogPath:    "nvidia-smi.log",
			CDIDevices: []*runtimeapi.CDIDevice{{Name: "nvidia.com/gpu=all"}},
			Linux:      &runtimeapi.LinuxContainerConfig{},
		},
		SandboxConfig: podConfig,
	})
	if err != nil {
		fatal("CreateContainer with CDI_devices nvidia.com/gpu=all", err)
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		fatal("StartContainer", err)
	}
	var exit int32 = -1
	for i := 0; i < 600; i++ {
		status, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: created.ContainerId})
		if err != nil {
			fatal("ContainerStatus", err)
		}
		if status.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			exit = status.Status.ExitCode
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(logs, "nvidia-smi.log"))
	// CRI log lines: "<time> <stream> <tag> <text>".
	var text strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		if parts := strings.SplitN(line, " ", 4); len(parts) == 4 {
			text.WriteString(parts[3] + "\n")
		}
	}
	fmt.Printf("--- CRI container, CDI_devices nvidia.com/gpu=all: nvidia-smi -L (exit %d)\n%s", exit, text.String())
	check("CRI CDI_devices nvidia.com/gpu=all runs nvidia-smi -L", exit == 0 && strings.Contains(text.String(), "GPU 0:"), text.String())
}

func main() {
	criSocket := flag.String("cri", "", "wharfd's CRI socket")
	dockerSocket := flag.String("docker", "", "wharfd's Docker API socket")
	logs := flag.String("logs", "", "a directory for the CRI pod's logs")
	files := flag.String("files", "", "host files for the image, comma-separated")
	cuda := flag.String("cuda", "", "a CUDA vector-add program (optional)")
	flag.Parse()
	if *criSocket == "" || *dockerSocket == "" || *logs == "" || *files == "" {
		fmt.Fprintln(os.Stderr, "usage: gpu-e2e -cri SOCK -docker SOCK -logs DIR -files A,B,... [-cuda PROGRAM]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	layer, config, err := imageParts(strings.Split(*files, ","), *cuda)
	if err != nil {
		fatal("building the image", err)
	}
	archive, err := dockerArchive(layer, config)
	if err != nil {
		fatal("building the image archive", err)
	}
	d := newDocker(*dockerSocket)
	status, data, err := d.call("POST", "/images/load?quiet=1", archive, "application/x-tar")
	if err != nil || status != 200 {
		fatal("POST /images/load", fmt.Errorf("%d %s %v", status, data, err))
	}
	fmt.Printf("--- POST /images/load (%d bytes): %s\n", len(archive), strings.TrimSpace(string(data)))

	registry, err := serveRegistry(layer, config)
	if err != nil {
		fatal("the loopback registry", err)
	}
	criNvidiaSmi(ctx, *criSocket, *logs, registry+"/gpu-e2e:latest")

	gpuRequest := []map[string]any{{"Driver": "", "Count": -1, "Capabilities": [][]string{{"gpu"}}}}
	exit, out, _, err := d.run([]string{"nvidia-smi", "-L"}, map[string]any{"DeviceRequests": gpuRequest})
	if err != nil {
		fatal("docker run --gpus all", err)
	}
	fmt.Printf("--- Docker API, --gpus all: nvidia-smi -L (exit %d)\n%s", exit, out)
	check("Docker --gpus all runs nvidia-smi -L", exit == 0 && strings.Contains(out, "GPU 0:"), out)

	if *cuda != "" {
		exit, out, _, err = d.run([]string{"/usr/local/bin/vector-add"}, map[string]any{"DeviceRequests": gpuRequest})
		if err != nil {
			fatal("docker run --gpus all vector-add", err)
		}
		fmt.Printf("--- Docker API, --gpus all: CUDA vector addition (exit %d)\n%s", exit, out)
		check("CUDA vector addition on the GPU", exit == 0 && strings.Contains(out, "PASS"), out)
	} else {
		fmt.Println("--- no nvcc: the CUDA vector addition was not built")
	}

	exit, out, _, err = d.run([]string{"ls", "/dev"}, map[string]any{})
	if err != nil {
		fatal("docker run without a GPU", err)
	}
	fmt.Printf("--- Docker API, no device: ls /dev (exit %d)\n%s", exit, out)
	check("a container without the device sees no GPU", exit == 0 && !strings.Contains(out, "nvidia"), out)
	exit, out, _, err = d.run([]string{"nvidia-smi", "-L"}, map[string]any{})
	if err != nil {
		fatal("docker run without a GPU", err)
	}
	fmt.Printf("--- Docker API, no device: nvidia-smi -L (exit %d)\n%s", exit, out)
	check("a container without the device has no nvidia-smi", exit != 0, out)

	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		fmt.Println("--- not a cgroup v2 host: the cgroup v2 checks were not run")
	} else {
		limits := map[string]any{"Memory": 64 << 20, "PidsLimit": 32, "NanoCpus": 500_000_000}
		exit, out, _, err = d.run([]string{"/bin/sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max"}, limits)
		if err != nil {
			fatal("docker run with limits", err)
		}
		fmt.Printf("--- cgroup v2, -m 64m --pids-limit 32 --cpus 0.5: memory.max pids.max cpu.max (exit %d)\n%s", exit, out)
		check("cgroup v2 limits", out == "67108864\n32\n50000 100000\n", out)
		exit, out, inspect, err := d.run([]string{"/usr/bin/tail", "/dev/zero"}, map[string]any{"Memory": 32 << 20, "MemorySwap": 32 << 20})
		if err != nil {
			fatal("docker run OOM", err)
		}
		state, _ := inspect["State"].(map[string]any)
		fmt.Printf("--- cgroup v2, -m 32m: tail /dev/zero (exit %d), State.OOMKilled %v\n", exit, state["OOMKilled"])
		check("OOM kill under cgroup v2", exit == 137 && state["OOMKilled"] == true, out)
	}
	if failed {
		os.Exit(1)
	}
	fmt.Println("ALL PASSED")
}
