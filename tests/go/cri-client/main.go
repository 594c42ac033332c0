// cri-client drives a CRI runtime through a whole pod lifecycle with grpc-go and the
// Go types of k8s.io/cri-api, dialing the UNIX socket by its path exactly as cri-tools
// and older kubelets do (grpc.DialContext(ctx, "/path/to.sock", WithContextDialer)).
// grpc-go then sends the path as the HTTP/2 :authority, which a strict server rejects.
//
// It is a test client of wharf's suite (tests/cri_go_client.rs): it prints one line
// per step and exits 1 naming the step that failed.
//
//	cri-client -socket /run/wharf/wharf.sock -image 127.0.0.1:5000/test/busybox:latest -logs DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func fail(step string, err error) {
	fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", step, err)
	os.Exit(1)
}

func main() {
	socket := flag.String("socket", "", "path of the CRI socket")
	image := flag.String("image", "", "image to pull and run (with sh, echo and sleep)")
	logs := flag.String("logs", "", "directory for the pod's logs")
	name := flag.String("name", fmt.Sprintf("go-client-%d", os.Getpid()), "pod name")
	flag.Parse()
	if *socket == "" || *image == "" || *logs == "" {
		fmt.Fprintln(os.Stderr, "usage: cri-client -socket PATH -image REF -logs DIR")
		os.Exit(2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	//nolint:staticcheck // DialContext by path is exactly what is under test.
	conn, err := grpc.DialContext(ctx, *socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithBlock())
	if err != nil {
		fail("dial", err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	img := runtimeapi.NewImageServiceClient(conn)

	version, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
	if err != nil {
		fail("Version", err)
	}
	fmt.Printf("Version %s %s %s\n", version.RuntimeName, version.RuntimeVersion, version.RuntimeApiVersion)

	pulled, err := img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: *image}})
	if err != nil {
		fail("PullImage", err)
	}
	fmt.Printf("PullImage %s\n", pulled.ImageRef)

	podConfig := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name: *name, Uid: "uid-" + *name, Namespace: "default",
		},
		Hostname:     *name,
		LogDirectory: *logs,
		Labels:       map[string]string{"client": "go"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: runtimeapi.NamespaceMode_POD,
					Pid:     runtimeapi.NamespaceMode_CONTAINER,
					Ipc:     runtimeapi.NamespaceMode_POD,
				},
			},
		},
	}
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig})
	if err != nil {
		fail("RunPodSandbox", err)
	}
	fmt.Printf("RunPodSandbox %s\n", pod.PodSandboxId)

	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
			Image:    &runtimeapi.ImageSpec{Image: *image},
			Command:  []string{"sh", "-c", "echo hello-from-go; exec sleep 3600"},
			LogPath:  "main.log",
		},
		SandboxConfig: podConfig,
	})
	if err != nil {
		fail("CreateContainer", err)
	}
	id := created.ContainerId
	fmt.Printf("CreateContainer %s\n", id)

	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		fail("StartContainer", err)
	}
	fmt.Println("StartContainer ok")

	listed, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{
		Filter: &runtimeapi.ContainerFilter{PodSandboxId: pod.PodSandboxId},
	})
	if err != nil {
		fail("ListContainers", err)
	}
	if len(listed.Containers) != 1 || listed.Containers[0].Id != id ||
		listed.Containers[0].State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		fail("ListContainers", fmt.Errorf("want the one running container %s, got %v", id, listed.Containers))
	}
	fmt.Printf("ListContainers %s %s\n", listed.Containers[0].Id, listed.Containers[0].State)

	exec, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{
		ContainerId: id, Cmd: []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 7"}, Timeout: 30,
	})
	if err != nil {
		fail("ExecSync", err)
	}
	if exec.ExitCode != 7 || strings.TrimSpace(string(exec.Stdout)) != "exec-out" ||
		strings.TrimSpace(string(exec.Stderr)) != "exec-err" {
		fail("ExecSync", fmt.Errorf("want exit 7, exec-out, exec-err; got exit %d, %q, %q",
			exec.ExitCode, exec.Stdout, exec.Stderr))
	}
	fmt.Printf("ExecSync exit=%d stdout=%q\n", exec.ExitCode, strings.TrimSpace(string(exec.Stdout)))

	if _, err := rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 10}); err != nil {
		fail("StopContainer", err)
	}
	status, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		fail("ContainerStatus", err)
	}
	if status.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		fail("ContainerStatus", fmt.Errorf("after StopContainer: state %s", status.Status.State))
	}
	fmt.Printf("StopContainer %s exit=%d\n", status.Status.State, status.Status.ExitCode)

	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		fail("RemoveContainer", err)
	}
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
		fail("StopPodSandbox", err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
		fail("RemovePodSandbox", err)
	}
	pods, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		fail("ListPodSandbox", err)
	}
	for _, p := range pods.Items {
		if p.Id == pod.PodSandboxId {
			fail("ListPodSandbox", fmt.Errorf("removed pod %s still listed", p.Id))
		}
	}
	fmt.Println("removed ok")
}
