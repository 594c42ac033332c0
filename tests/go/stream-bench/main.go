// stream-bench measures a CRI runtime's streaming server (issue 17) through the same
// client code kubectl and crictl use: grpc-go with k8s.io/cri-api v1 for the RPCs,
// client-go's remotecommand.NewSPDYExecutor for exec and client-go's portforward
// (SPDY/3.1) for port forwarding. bench/compare-streaming.sh runs it against wharfd and
// containerd in alternation.
//
//	stream-bench run --socket PATH --image REF --logs DIR --run-id ID [flags]
//	    Pulls --image (untimed), starts one pod (the endpoint's pod network) with one
//	    busybox container that serves port 5001 (`nc -l -p 5001 < /dev/zero`, again and
//	    again) and sinks port 5002 (`nc -l -p 5002 > /dev/null`), then measures:
//	    1. exec round trip: the Exec RPC, the SPDY upgrade of its URL, `true` run in the
//	       container and its exit code received (--exec-n times one after another, after
//	       --exec-warmup untimed ones); phases: rpc (Exec answered), upgrade (HTTP 101
//	       received), stream (streams opened, command run, exit status received).
//	       ExecSync of `true` (--execsync-n times) is timed the same way, for reference.
//	    2. port-forward throughput of one stream, --pf-bytes each way: download (read
//	       from the pod) and upload (written to it, timed until the far end closed;
//	       to the netns server, until its last byte arrived there),
//	       through a client-go port-forward (a new PortForward URL per transfer) and,
//	       as the floor, over a direct TCP connection from this host to the pod IP.
//	       Two servers in the pod: busybox nc in the container (ports 5001, 5002; it
//	       reads and writes 1 KiB at a time) and stream-bench's own on a socket it
//	       makes in the pod's network namespace (ports 5003, 5004; 1 MiB at a time).
//	    3. per exec session memory: --sessions concurrent idle exec sessions
//	       (`sh -c 'echo ready; exec sleep 600'`, stdin open, stdout and stderr; started
//	       one after another, each once the previous one printed "ready", or all at
//	       once with --sessions-burst); RSS and PSS (/proc/PID/smaps_rollup) of the
//	       daemon (--daemon-pid) and of the runtime's processes of the container
//	       (host-PID-namespace processes whose comm or argv[0] contains a
//	       --shim-pattern name and whose command line names the pod or the container
//	       id, plus their host-namespace descendants: wharf's wharf-monitor-watch,
//	       containerd's containerd-shim-runc-v2) before the sessions, with all of them
//	       established (each printed "ready" to the client), and 3 s after the client
//	       left them (contexts cancelled); --sessions-hold keeps them open longer.
//	       --exec-trace writes each exec's times on CLOCK_MONOTONIC, to line up with
//	       `perf record -k CLOCK_MONOTONIC` (where the time goes), and each session's
//	       start and "ready" to the same path + ".sessions".
//	    --skip exec,execsync,portforward,sessions leaves phases out. Prints one JSON
//	    object on stdout; progress goes to stderr (and client-go's errors: a "connection
//	    refused" there is nc between two connections, retried). The pod carries the
//	    label stream-bench.run=ID and is removed at the end, after a failure and on
//	    SIGINT/SIGTERM.
//	stream-bench cleanup --socket PATH --run-id ID
//	    Stops and removes the pods labelled stream-bench.run=ID (after a crash).
//
// The streaming URLs name the streaming server directly; no credentials and no proxy
// are used. Exit status: 0 when everything was measured and cleaned up, 1 otherwise
// (the JSON then says what failed), 2 for bad flags.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"
)

const (
	usage = `usage:
  stream-bench run --socket PATH --image REF --logs DIR --run-id ID [--exec-n 200] [--exec-warmup 5]
      [--execsync-n 100] [--pf-bytes 1073741824] [--sessions 20] [--sessions-burst] [--sessions-hold 0s]
      [--exec-trace FILE] [--daemon-pid PID]
      [--shim-pattern 'wharf-monitor|containerd-shim'] [--skip exec,execsync,portforward,sessions]
  stream-bench cleanup --socket PATH --run-id ID
`
	runLabel = "stream-bench.run"
	// The container: one nc after another on each port (busybox nc serves one
	// connection and exits). The sink's stdin is a FIFO that it holds open itself:
	// with /dev/null, nc would half-close the connection at once, and client-go's
	// port-forward ends a connection when the remote side's data ends. The first
	// word marks the process, to find the pod's network namespace.
	serveScript = ": stream-bench-serve-%s; mkfifo /tmp/hold; " +
		"while :; do nc -l -p 5001 < /dev/zero; done & " +
		"while :; do nc -l -p 5002 0<>/tmp/hold > /dev/null; done"
)

// An upload to the netns server is timed until its last byte arrived there: a runtime
// that does not pass the client's half-close on to the pod (containerd 1.6 closes the
// connection 1 s after one direction ended) would otherwise add that wait.
var (
	sinkExpect  atomic.Int64
	sinkArrived = make(chan time.Time, 1)
)

// The pod-side ends of the transfers: port per direction.
var servers = []struct {
	name             string
	download, upload int
}{
	// busybox nc in the container (1 KiB reads and writes).
	{"nc", 5001, 5002},
	// stream-bench's own server on a socket in the pod's network namespace (1 MiB
	// reads and writes): what the network path and the forwarding can do.
	{"netns", 5003, 5004},
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "stream-bench: "+format+"\n", args...)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	// client-go reports failures of port-forward's connections through klog (stderr).
	var klogFlags flag.FlagSet
	klog.InitFlags(&klogFlags)
	_ = klogFlags.Set("v", os.Getenv("STREAM_BENCH_V"))

	mode, args := os.Args[1], os.Args[2:]
	switch mode {
	case "run":
		os.Exit(runMode(args))
	case "cleanup":
		os.Exit(cleanupMode(args))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n%s", mode, usage)
		os.Exit(2)
	}
}

// ---- CRI connection ----------------------------------------------------------------

type cri struct {
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
	img  runtimeapi.ImageServiceClient
}

func dial(socket string) (*cri, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, err
	}
	return &cri{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn)}, nil
}

// removePods stops and removes every pod labelled runLabel=runID (containers first).
func (c *cri) removePods(runID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	selector := map[string]string{runLabel: runID}
	var errs []error
	containers, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return fmt.Errorf("ListContainers: %w", err)
	}
	pods, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{LabelSelector: selector},
	})
	if err != nil {
		return fmt.Errorf("ListPodSandbox: %w", err)
	}
	for _, pod := range pods.Items {
		for _, ctr := range containers.Containers {
			if ctr.PodSandboxId != pod.Id {
				continue
			}
			if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: ctr.Id, Timeout: 0}); err != nil {
				errs = append(errs, fmt.Errorf("StopContainer %s: %w", ctr.Id, err))
			}
			if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: ctr.Id}); err != nil {
				errs = append(errs, fmt.Errorf("RemoveContainer %s: %w", ctr.Id, err))
			}
		}
		if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.Id}); err != nil {
			errs = append(errs, fmt.Errorf("StopPodSandbox %s: %w", pod.Id, err))
		}
		if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.Id}); err != nil {
			errs = append(errs, fmt.Errorf("RemovePodSandbox %s: %w", pod.Id, err))
		}
	}
	return errors.Join(errs...)
}

func cleanupMode(args []string) int {
	fs := flag.NewFlagSet("stream-bench cleanup", flag.ContinueOnError)
	socket := fs.String("socket", "", "CRI socket path")
	runID := fs.String("run-id", "", "the run whose pods to remove")
	if err := fs.Parse(args); err != nil || *socket == "" || *runID == "" {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	c, err := dial(*socket)
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer c.conn.Close()
	if err := c.removePods(*runID); err != nil {
		logf("cleanup: %v", err)
		return 1
	}
	return 0
}

// ---- results -----------------------------------------------------------------------

type series struct {
	N     int      `json:"n"`
	P50   *float64 `json:"p50_ms"`
	P90   *float64 `json:"p90_ms"`
	P99   *float64 `json:"p99_ms"`
	Max   *float64 `json:"max_ms"`
	Mean  *float64 `json:"mean_ms"`
	Total *float64 `json:"total_s,omitempty"`
}

// summarize gives nearest-rank percentiles (the smallest sample with at least p % of
// the samples at or below it), in ms.
func summarize(samples []time.Duration) series {
	s := series{N: len(samples)}
	if len(samples) == 0 {
		return s
	}
	ms := make([]float64, len(samples))
	var sum float64
	for i, d := range samples {
		ms[i] = float64(d.Microseconds()) / 1000
		sum += ms[i]
	}
	sort.Float64s(ms)
	rank := func(p float64) *float64 {
		i := int(math.Ceil(p/100*float64(len(ms)))) - 1
		if i < 0 {
			i = 0
		}
		v := ms[i]
		return &v
	}
	mean := sum / float64(len(ms))
	total := sum / 1000
	s.P50, s.P90, s.P99, s.Max, s.Mean, s.Total = rank(50), rank(90), rank(99), &ms[len(ms)-1], &mean, &total
	return s
}

type execResult struct {
	Cmd    []string          `json:"cmd"`
	Warmup int               `json:"warmup"`
	Total  series            `json:"round_trip"`
	Phases map[string]series `json:"phases"`
}

type transfer struct {
	Server    string  `json:"server"`
	Direction string  `json:"direction"`
	Path      string  `json:"path"`
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBps      float64 `json:"mb_per_s"`
	Attempts  int     `json:"attempts"`
	// CPU time (user + system) during the timed transfer: the daemon's (--daemon-pid;
	// the streaming server runs in it) and this process's (client and, for the netns
	// server, the pod-side end too).
	DaemonCPUS *float64 `json:"daemon_cpu_s"`
	SelfCPUS   float64  `json:"self_cpu_s"`
}

type procMem struct {
	Pid     int     `json:"pid"`
	Comm    string  `json:"comm"`
	RssKiB  float64 `json:"rss_kib"`
	PssKiB  float64 `json:"pss_kib"`
	AnonKiB float64 `json:"anon_kib"`
}

type memPoint struct {
	DaemonRssKiB   *float64  `json:"daemon_rss_kib"`
	DaemonPssKiB   *float64  `json:"daemon_pss_kib"`
	DaemonAnonKiB  *float64  `json:"daemon_anon_kib"`
	DaemonThreads  *int      `json:"daemon_threads"`
	MonitorRssKiB  float64   `json:"monitor_rss_kib"`
	MonitorPssKiB  float64   `json:"monitor_pss_kib"`
	MonitorAnonKiB float64   `json:"monitor_anon_kib"`
	MonitorProcs   []procMem `json:"monitor_procs"`
}

type sessionsResult struct {
	K      int     `json:"sessions"`
	SetupS float64 `json:"setup_s"`
	// Exec RPC to "ready" on the client, per session (one after another only).
	Ready      *series  `json:"ready"`
	Before     memPoint `json:"before"`
	Open       memPoint `json:"open"`
	After      memPoint `json:"after_close"`
	PerSession struct {
		DaemonRssKiB  *float64 `json:"daemon_rss_kib"`
		DaemonPssKiB  *float64 `json:"daemon_pss_kib"`
		MonitorRssKiB float64  `json:"monitor_rss_kib"`
		MonitorPssKiB float64  `json:"monitor_pss_kib"`
	} `json:"per_session"`
}

type result struct {
	Endpoint       string          `json:"endpoint"`
	Image          string          `json:"image"`
	RuntimeName    string          `json:"runtime_name"`
	RuntimeVersion string          `json:"runtime_version"`
	DaemonPid      int             `json:"daemon_pid"`
	PodID          string          `json:"pod_id"`
	ContainerID    string          `json:"container_id"`
	PodIP          string          `json:"pod_ip"`
	Exec           *execResult     `json:"exec"`
	ExecSync       *series         `json:"exec_sync"`
	PortForward    []transfer      `json:"port_forward"`
	Sessions       *sessionsResult `json:"sessions"`
	Complete       bool            `json:"complete"`
	Error          *string         `json:"error"`
	CleanupError   *string         `json:"cleanup_error"`
}

// ---- run ---------------------------------------------------------------------------

type options struct {
	socket, image, logs, runID   string
	execN, execWarmup, execSyncN int
	pfBytes                      int64
	sessions                     int
	sessionsHold                 time.Duration
	sessionsBurst                bool
	execTrace                    string
	daemonPid                    int
	shimPatterns                 []string
	skip                         map[string]bool
}

func runMode(args []string) int {
	fs := flag.NewFlagSet("stream-bench run", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.socket, "socket", "", "CRI socket path")
	fs.StringVar(&o.image, "image", "", "busybox image (sh, nc, sleep, true)")
	fs.StringVar(&o.logs, "logs", "", "directory for the pod's log directory")
	fs.StringVar(&o.runID, "run-id", "", "label value of this run's pod")
	fs.IntVar(&o.execN, "exec-n", 200, "timed exec round trips")
	fs.IntVar(&o.execWarmup, "exec-warmup", 5, "untimed exec round trips before them")
	fs.IntVar(&o.execSyncN, "execsync-n", 100, "timed ExecSync calls (reference)")
	fs.StringVar(&o.execTrace, "exec-trace", "", "write each timed exec's CLOCK_MONOTONIC times (ns) to this file, one JSON object a line, to line them up with `perf record -k CLOCK_MONOTONIC`")
	fs.Int64Var(&o.pfBytes, "pf-bytes", 1<<30, "bytes per port-forward transfer")
	fs.IntVar(&o.sessions, "sessions", 20, "concurrent idle exec sessions")
	fs.BoolVar(&o.sessionsBurst, "sessions-burst", false, "start the sessions all at once (default: one after another, each started once the previous one is ready)")
	fs.DurationVar(&o.sessionsHold, "sessions-hold", 0, "keep the sessions open this much longer after measuring (to look at the processes)")
	fs.IntVar(&o.daemonPid, "daemon-pid", 0, "the daemon's pid (memory)")
	shim := fs.String("shim-pattern", "wharf-monitor|containerd-shim", "|-separated names of the runtime's per-container processes")
	skip := fs.String("skip", "", "phases to skip: exec,execsync,portforward,sessions")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.socket == "" || o.image == "" || o.logs == "" || o.runID == "" || fs.NArg() > 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	o.shimPatterns = strings.Split(*shim, "|")
	o.skip = map[string]bool{}
	for _, s := range strings.Split(*skip, ",") {
		if s != "" {
			o.skip[s] = true
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res := &result{Endpoint: "unix://" + o.socket, Image: o.image, DaemonPid: o.daemonPid}
	c, err := dial(o.socket)
	if err == nil {
		defer c.conn.Close()
		err = run(ctx, c, &o, res)
		if cerr := c.removePods(o.runID); cerr != nil {
			msg := cerr.Error()
			res.CleanupError = &msg
			logf("CLEANUP FAILED: %v", cerr)
		}
	}
	if err != nil {
		msg := err.Error()
		res.Error = &msg
		logf("FAILED: %v", err)
	}
	res.Complete = err == nil && res.CleanupError == nil
	out, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(out))
	if !res.Complete {
		return 1
	}
	return 0
}

func run(ctx context.Context, c *cri, o *options, res *result) error {
	version, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
	if err != nil {
		return fmt.Errorf("Version: %w", err)
	}
	res.RuntimeName, res.RuntimeVersion = version.RuntimeName, version.RuntimeVersion
	if _, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: o.image}}); err != nil {
		return fmt.Errorf("PullImage %s: %w", o.image, err)
	}

	name := "stream-bench-" + o.runID
	logDir := filepath.Join(o.logs, name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	podConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "stream-bench"},
		Hostname:     name,
		LogDirectory: logDir,
		Labels:       map[string]string{runLabel: o.runID},
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
	pod, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig})
	if err != nil {
		return fmt.Errorf("RunPodSandbox: %w", err)
	}
	res.PodID = pod.PodSandboxId
	created, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "nc"},
			Image:    &runtimeapi.ImageSpec{Image: o.image},
			Command:  []string{"sh", "-c", fmt.Sprintf(serveScript, o.runID)},
			LogPath:  "nc.log",
			Labels:   map[string]string{runLabel: o.runID},
		},
		SandboxConfig: podConfig,
	})
	if err != nil {
		return fmt.Errorf("CreateContainer: %w", err)
	}
	res.ContainerID = created.ContainerId
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		return fmt.Errorf("StartContainer: %w", err)
	}
	status, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.PodSandboxId})
	if err != nil {
		return fmt.Errorf("PodSandboxStatus: %w", err)
	}
	if status.Status.GetNetwork().GetIp() == "" {
		return errors.New("the pod has no IP: a pod network is needed for the direct-TCP floor")
	}
	res.PodIP = status.Status.Network.Ip
	logf("%s %s: pod %.12s container %.12s ip %s", res.RuntimeName, res.RuntimeVersion, res.PodID, res.ContainerID, res.PodIP)

	if !o.skip["exec"] {
		logf("exec round trips: %d (+%d warm-up)", o.execN, o.execWarmup)
		if res.Exec, err = benchExec(ctx, c, res.ContainerID, o.execN, o.execWarmup, o.execTrace); err != nil {
			return err
		}
	}
	if !o.skip["execsync"] {
		logf("ExecSync: %d", o.execSyncN)
		if res.ExecSync, err = benchExecSync(ctx, c, res.ContainerID, o.execSyncN); err != nil {
			return err
		}
	}
	if !o.skip["portforward"] {
		netns, err := podNetns("stream-bench-serve-" + o.runID)
		if err != nil {
			return err
		}
		listeners, err := serveInNetns(netns, servers[1].download, servers[1].upload)
		if err != nil {
			return err
		}
		defer func() {
			for _, l := range listeners {
				l.Close()
			}
		}()
		if err := waitListening(ctx, res.PodIP, servers[0].download); err != nil {
			return err
		}
		for _, server := range servers {
			for _, direction := range []string{"download", "upload"} {
				port := server.download
				if direction == "upload" {
					port = server.upload
				}
				for _, path := range []string{"port-forward", "direct"} {
					logf("%s %d bytes, %s, %s", direction, o.pfBytes, server.name, path)
					t, err := benchTransfer(ctx, c, res.PodID, res.PodIP, port, direction, path, o.pfBytes, o.daemonPid)
					if err != nil {
						return err
					}
					t.Server = server.name
					logf("  %.1f MB/s", t.MBps)
					res.PortForward = append(res.PortForward, t)
				}
			}
		}
	}
	if !o.skip["sessions"] {
		logf("%d concurrent exec sessions", o.sessions)
		if res.Sessions, err = benchSessions(ctx, c, o, res); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// ---- 1. exec round trip -------------------------------------------------------------

// timingTransport records when the upgrade's response (101) arrived.
type timingTransport struct {
	inner http.RoundTripper
	done  time.Time
}

func (t *timingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	t.done = time.Now()
	return resp, err
}

// restConfig is what kubectl would build, less what the one-time URL makes moot.
func restConfig(u *url.URL) *rest.Config {
	return &rest.Config{
		Host:            u.Scheme + "://" + u.Host,
		TLSClientConfig: rest.TLSClientConfig{Insecure: u.Scheme == "https"},
		Proxy:           func(*http.Request) (*url.URL, error) { return nil, nil },
	}
}

// streamExec connects to an exec URL as kubectl does and runs it to its end; returns
// the exit code and when the upgrade was answered.
func streamExec(ctx context.Context, rawURL string, options remotecommand.StreamOptions) (int, time.Time, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, time.Time{}, err
	}
	rt, upgrader, err := spdy.RoundTripperFor(restConfig(u))
	if err != nil {
		return 0, time.Time{}, err
	}
	timing := &timingTransport{inner: rt}
	executor, err := remotecommand.NewSPDYExecutorForTransports(timing, upgrader, "POST", u)
	if err != nil {
		return 0, time.Time{}, err
	}
	err = executor.StreamWithContext(ctx, options)
	var exitErr utilexec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		return exitErr.ExitStatus(), timing.done, nil
	}
	return 0, timing.done, err
}

// monotonic is CLOCK_MONOTONIC in ns (perf's clock with -k CLOCK_MONOTONIC).
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func benchExec(ctx context.Context, c *cri, containerID string, n, warmup int, tracePath string) (*execResult, error) {
	cmd := []string{"true"}
	var total, rpc, upgrade, stream []time.Duration
	var trace *os.File
	if tracePath != "" {
		var err error
		if trace, err = os.Create(tracePath); err != nil {
			return nil, err
		}
		defer trace.Close()
	}
	for i := 0; i < warmup+n; i++ {
		m0 := monotonic()
		t0 := time.Now()
		resp, err := c.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: containerID, Cmd: cmd, Stdout: true, Stderr: true})
		if err != nil {
			return nil, fmt.Errorf("Exec: %w", err)
		}
		t1 := time.Now()
		code, upgraded, err := streamExec(ctx, resp.Url, remotecommand.StreamOptions{Stdout: io.Discard, Stderr: io.Discard})
		t3 := time.Now()
		if err != nil {
			return nil, fmt.Errorf("exec stream %d: %w", i, err)
		}
		if code != 0 {
			return nil, fmt.Errorf("exec %d: `true` exited %d", i, code)
		}
		if i < warmup {
			continue
		}
		if trace != nil {
			// The wall-clock differences, on the monotonic base of m0.
			fmt.Fprintf(trace, "{\"i\":%d,\"start\":%d,\"rpc_done\":%d,\"upgraded\":%d,\"exited\":%d}\n", i-warmup,
				m0, m0+int64(t1.Sub(t0)), m0+int64(upgraded.Sub(t0)), m0+int64(t3.Sub(t0)))
		}
		total = append(total, t3.Sub(t0))
		rpc = append(rpc, t1.Sub(t0))
		upgrade = append(upgrade, upgraded.Sub(t1))
		stream = append(stream, t3.Sub(upgraded))
	}
	return &execResult{
		Cmd: cmd, Warmup: warmup, Total: summarize(total),
		Phases: map[string]series{"rpc": summarize(rpc), "upgrade": summarize(upgrade), "stream": summarize(stream)},
	}, nil
}

func benchExecSync(ctx context.Context, c *cri, containerID string, n int) (*series, error) {
	var samples []time.Duration
	for i := 0; i < n; i++ {
		t0 := time.Now()
		resp, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: containerID, Cmd: []string{"true"}, Timeout: 30})
		if err != nil {
			return nil, fmt.Errorf("ExecSync: %w", err)
		}
		if resp.ExitCode != 0 {
			return nil, fmt.Errorf("ExecSync: `true` exited %d", resp.ExitCode)
		}
		samples = append(samples, time.Since(t0))
	}
	s := summarize(samples)
	return &s, nil
}

// ---- 2. port-forward throughput -------------------------------------------------------

// waitListening waits until the container's nc serves the download port (one byte read
// through a direct connection).
func waitListening(ctx context.Context, ip string, port int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(port)), time.Second)
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("nothing serves %s:%d in the pod: %v", ip, port, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// forwarder is one client-go port-forward (one SPDY connection) to the pod, listening
// on a free local port per remote port.
type forwarder struct {
	stop  chan struct{}
	done  chan error
	local map[int]int
}

func startForwarder(ctx context.Context, c *cri, podID string, ports []int) (*forwarder, error) {
	var remote []int32
	var specs []string
	for _, p := range ports {
		remote = append(remote, int32(p))
		specs = append(specs, fmt.Sprintf("0:%d", p))
	}
	resp, err := c.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: podID, Port: remote})
	if err != nil {
		return nil, fmt.Errorf("PortForward: %w", err)
	}
	u, err := url.Parse(resp.Url)
	if err != nil {
		return nil, err
	}
	rt, upgrader, err := spdy.RoundTripperFor(restConfig(u))
	if err != nil {
		return nil, err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	f := &forwarder{stop: make(chan struct{}), done: make(chan error, 1), local: map[int]int{}}
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, specs, f.stop, ready, io.Discard, os.Stderr)
	if err != nil {
		return nil, err
	}
	go func() { f.done <- pf.ForwardPorts() }()
	select {
	case err := <-f.done:
		return nil, fmt.Errorf("port-forward ended before it was ready: %v", err)
	case <-ready:
	case <-time.After(30 * time.Second):
		close(f.stop)
		return nil, errors.New("port-forward not ready after 30 s")
	}
	forwarded, err := pf.GetPorts()
	if err != nil {
		f.close()
		return nil, err
	}
	for _, p := range forwarded {
		f.local[int(p.Remote)] = int(p.Local)
	}
	return f, nil
}

func (f *forwarder) close() {
	close(f.stop)
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
	}
}

// transferOnce moves n bytes over one connection to addr. Download reads exactly n
// bytes; upload writes n bytes, half-closes and waits for the far end to close. The
// time runs from the dial to the last byte read (download) or the far end's close
// (upload). A connection refused, or one that ends with nothing moved (nc between
// two connections), returns moved 0.
func transferOnce(addr, direction string, n int64, arrived <-chan time.Time) (moved int64, elapsed time.Duration, err error) {
	buf := make([]byte, 1<<20)
	t0 := time.Now()
	conn, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	tcp := conn.(*net.TCPConn)
	_ = tcp.SetDeadline(time.Now().Add(5 * time.Minute))
	if direction == "download" {
		for moved < n {
			want := int64(len(buf))
			if n-moved < want {
				want = n - moved
			}
			k, err := tcp.Read(buf[:want])
			moved += int64(k)
			if err != nil {
				if moved == 0 {
					return 0, 0, nil
				}
				return moved, 0, fmt.Errorf("read after %d bytes: %w", moved, err)
			}
		}
		elapsed = time.Since(t0)
		// Leave as a client that is done does: end our side, let the server see it and
		// close, and drain what was still on the way (a close with unread data would
		// reset the connection instead).
		_ = tcp.CloseWrite()
		_ = tcp.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.CopyBuffer(io.Discard, struct{ io.Reader }{tcp}, buf)
		return moved, elapsed, nil
	}
	for moved < n {
		want := int64(len(buf))
		if n-moved < want {
			want = n - moved
		}
		k, err := tcp.Write(buf[:want])
		moved += int64(k)
		if err != nil {
			if moved < 1<<20 {
				return 0, 0, nil
			}
			return moved, 0, fmt.Errorf("write after %d bytes: %w", moved, err)
		}
	}
	if err := tcp.CloseWrite(); err != nil {
		return moved, 0, err
	}
	if _, err := io.Copy(io.Discard, tcp); err != nil {
		return moved, 0, fmt.Errorf("waiting for the far end to close: %w", err)
	}
	elapsed = time.Since(t0)
	if arrived != nil {
		select {
		case at := <-arrived:
			elapsed = at.Sub(t0)
		default:
			return moved, 0, errors.New("the server in the pod did not get all the bytes")
		}
	}
	return moved, elapsed, nil
}

// cpuSeconds is a process's user + system time (/proc/PID/stat, clock ticks of 100 Hz).
func cpuSeconds(pid int) (float64, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, false
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100, true
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func benchTransfer(ctx context.Context, c *cri, podID, podIP string, port int, direction, path string, n int64, daemonPid int) (transfer, error) {
	t := transfer{Direction: direction, Path: path, Bytes: n}
	// Between two connections nc does not listen: the connection is refused (by the
	// runtime's dial, which client-go's port-forward answers by closing the whole
	// forward, as kubectl's does) or ends with nothing moved. Try again.
	for t.Attempts = 1; t.Attempts <= 50; t.Attempts++ {
		if ctx.Err() != nil {
			return t, ctx.Err()
		}
		if t.Attempts > 1 {
			time.Sleep(100 * time.Millisecond)
		}
		addr := net.JoinHostPort(podIP, strconv.Itoa(port))
		var f *forwarder
		if path == "port-forward" {
			var err error
			if f, err = startForwarder(ctx, c, podID, []int{port}); err != nil {
				return t, err
			}
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(f.local[port]))
		}
		var arrived <-chan time.Time
		if direction == "upload" && port == servers[1].upload {
			select {
			case <-sinkArrived:
			default:
			}
			sinkExpect.Store(n)
			arrived = sinkArrived
		}
		daemon0, daemonKnown := cpuSeconds(daemonPid)
		self0 := selfCPU()
		moved, elapsed, err := transferOnce(addr, direction, n, arrived)
		sinkExpect.Store(0)
		daemon1, _ := cpuSeconds(daemonPid)
		self1 := selfCPU()
		if f != nil {
			f.close()
		}
		if err != nil {
			return t, fmt.Errorf("%s %s port %d: %w", direction, path, port, err)
		}
		if moved == n {
			if daemonKnown && daemonPid > 0 {
				cpu := daemon1 - daemon0
				t.DaemonCPUS = &cpu
			}
			t.SelfCPUS = self1 - self0
			t.Seconds = elapsed.Seconds()
			t.MBps = float64(n) / 1e6 / t.Seconds
			return t, nil
		}
	}
	return t, fmt.Errorf("%s %s port %d: no connection moved the bytes after 50 attempts", direction, path, port)
}

// podNetns finds the network namespace of the container's shell: the process outside
// the host's PID namespace whose command line contains marker.
func podNetns(marker string) (string, error) {
	hostNS, _ := os.Readlink("/proc/self/ns/pid")
	for _, p := range listProcs() {
		if p.pidns == hostNS {
			continue
		}
		for _, arg := range p.argv {
			if !strings.Contains(arg, marker) {
				continue
			}
			path := fmt.Sprintf("/proc/%d/ns/net", p.pid)
			ns, _ := os.Readlink(path)
			if own, _ := os.Readlink("/proc/self/ns/net"); ns == own {
				return "", fmt.Errorf("process %d (%s) is in the host's network namespace: no pod network", p.pid, marker)
			}
			return path, nil
		}
	}
	return "", fmt.Errorf("no process names %q: cannot find the pod's network namespace", marker)
}

// serveInNetns listens on 0.0.0.0:download and 0.0.0.0:upload in the network
// namespace at path: each connection to download gets zeros in 1 MiB writes until it
// goes; each one to upload is read in 1 MiB reads to its end, then closed.
func serveInNetns(path string, download, upload int) ([]net.Listener, error) {
	type made struct {
		listeners []net.Listener
		err       error
	}
	result := make(chan made, 1)
	go func() {
		// This thread enters the namespace and never leaves it: the goroutine ends
		// locked, so the runtime ends the thread.
		runtime.LockOSThread()
		ns, err := os.Open(path)
		if err != nil {
			result <- made{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			result <- made{err: fmt.Errorf("setns %s: %w", path, err)}
			return
		}
		var m made
		for _, port := range []int{download, upload} {
			l, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
			if err != nil {
				m.err = err
				break
			}
			m.listeners = append(m.listeners, l)
		}
		result <- m
	}()
	m := <-result
	if m.err != nil {
		for _, l := range m.listeners {
			l.Close()
		}
		return nil, m.err
	}
	serve := func(l net.Listener, handle func(net.Conn)) {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				handle(conn)
			}()
		}
	}
	go serve(m.listeners[0], func(conn net.Conn) {
		// Until the client ends its side.
		go func() {
			_, _ = io.Copy(io.Discard, conn)
			conn.Close()
		}()
		buf := make([]byte, 1<<20)
		for {
			if _, err := conn.Write(buf); err != nil {
				return
			}
		}
	})
	go serve(m.listeners[1], func(conn net.Conn) {
		buf := make([]byte, 1<<20)
		var got int64
		for {
			k, err := conn.Read(buf)
			got += int64(k)
			if want := sinkExpect.Load(); want > 0 && got >= want && got-int64(k) < want {
				select {
				case sinkArrived <- time.Now():
				default:
				}
			}
			if err != nil {
				return
			}
		}
	})
	return m.listeners, nil
}

// ---- 3. per exec session memory ---------------------------------------------------------

// smapsRollup reads Rss, Pss and Anonymous (KiB) of pid.
func smapsRollup(pid int) (rss, pss, anon float64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		case "Anonymous:":
			anon = v
		}
	}
	return rss, pss, anon, scanner.Err()
}

func threads(pid int) *int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	n := len(entries)
	return &n
}

type proc struct {
	pid, ppid int
	comm      string
	argv      []string
	pidns     string
}

func listProcs() map[int]proc {
	procs := map[int]proc{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp {
			continue
		}
		rest := strings.Fields(s[rp+1:])
		if len(rest) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(rest[1])
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
		procs[pid] = proc{pid: pid, ppid: ppid, comm: s[lp+1 : rp], argv: strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"), pidns: ns}
	}
	return procs
}

// runtimeProcs: processes of the host's PID namespace whose comm or argv[0] contains
// one of patterns and whose command line names one of ids, and their descendants in
// the host's PID namespace (not the container's processes).
func runtimeProcs(patterns, ids []string) []proc {
	procs := listProcs()
	hostNS, _ := os.Readlink("/proc/self/ns/pid")
	matches := func(p proc) bool {
		if p.pidns != hostNS {
			return false
		}
		named := false
		for _, pat := range patterns {
			if pat != "" && (strings.Contains(p.comm, pat) || (len(p.argv) > 0 && strings.Contains(filepath.Base(p.argv[0]), pat))) {
				named = true
			}
		}
		if !named {
			return false
		}
		for _, arg := range p.argv {
			for _, id := range ids {
				if id != "" && strings.Contains(arg, id) {
					return true
				}
			}
		}
		return false
	}
	chosen := map[int]bool{}
	for pid, p := range procs {
		if matches(p) {
			chosen[pid] = true
		}
	}
	for changed := true; changed; {
		changed = false
		for pid, p := range procs {
			if !chosen[pid] && chosen[p.ppid] && p.pidns == hostNS {
				chosen[pid] = true
				changed = true
			}
		}
	}
	var out []proc
	for pid := range chosen {
		out = append(out, procs[pid])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pid < out[j].pid })
	return out
}

func measure(o *options, ids []string) memPoint {
	var m memPoint
	if o.daemonPid > 0 {
		if rss, pss, anon, err := smapsRollup(o.daemonPid); err == nil {
			m.DaemonRssKiB, m.DaemonPssKiB, m.DaemonAnonKiB = &rss, &pss, &anon
		}
		m.DaemonThreads = threads(o.daemonPid)
	}
	for _, p := range runtimeProcs(o.shimPatterns, ids) {
		rss, pss, anon, err := smapsRollup(p.pid)
		if err != nil {
			continue
		}
		m.MonitorProcs = append(m.MonitorProcs, procMem{Pid: p.pid, Comm: p.comm, RssKiB: rss, PssKiB: pss, AnonKiB: anon})
		m.MonitorRssKiB += rss
		m.MonitorPssKiB += pss
		m.MonitorAnonKiB += anon
	}
	return m
}

// readyWriter closes ready at the first byte written (the session's "ready").
type readyWriter struct {
	once  sync.Once
	ready chan struct{}
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.ready) })
	return len(p), nil
}

func benchSessions(ctx context.Context, c *cri, o *options, res *result) (*sessionsResult, error) {
	ids := []string{res.PodID, res.ContainerID}
	out := &sessionsResult{K: o.sessions}
	time.Sleep(2 * time.Second)
	out.Before = measure(o, ids)
	if len(out.Before.MonitorProcs) == 0 {
		return nil, fmt.Errorf("no process matching %q names pod %s or container %s", o.shimPatterns, res.PodID, res.ContainerID)
	}

	sessionCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, o.sessions)
	readies := make([]chan struct{}, o.sessions)
	stdins := make([]*io.PipeWriter, o.sessions)
	var trace *os.File
	if o.execTrace != "" {
		var err error
		if trace, err = os.Create(o.execTrace + ".sessions"); err != nil {
			return nil, err
		}
		defer trace.Close()
	}
	t0 := time.Now()
	var readyTimes []time.Duration
	for i := 0; i < o.sessions; i++ {
		started, m0 := time.Now(), monotonic()
		resp, err := c.rt.Exec(ctx, &runtimeapi.ExecRequest{
			ContainerId: res.ContainerID, Cmd: []string{"sh", "-c", "echo ready; exec sleep 600"},
			Stdin: true, Stdout: true, Stderr: true,
		})
		if err != nil {
			return nil, fmt.Errorf("Exec (session %d): %w", i, err)
		}
		stdinR, stdinW := io.Pipe()
		stdins[i] = stdinW
		w := &readyWriter{ready: make(chan struct{})}
		readies[i] = w.ready
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, _, err := streamExec(sessionCtx, resp.Url, remotecommand.StreamOptions{Stdin: stdinR, Stdout: w, Stderr: io.Discard})
			if sessionCtx.Err() == nil {
				errs <- fmt.Errorf("session %d ended early: %v", i, err)
			}
		}(i)
		if !o.sessionsBurst {
			select {
			case <-w.ready:
				readyTimes = append(readyTimes, time.Since(started))
				if trace != nil {
					fmt.Fprintf(trace, "{\"i\":%d,\"start\":%d,\"exited\":%d}\n", i, m0, m0+int64(time.Since(started)))
				}
			case err := <-errs:
				return nil, err
			case <-time.After(60 * time.Second):
				return nil, fmt.Errorf("session %d not ready after 60 s", i)
			}
		}
	}
	for i, ready := range readies {
		select {
		case <-ready:
		case err := <-errs:
			return nil, err
		case <-time.After(60 * time.Second):
			return nil, fmt.Errorf("session %d not ready after 60 s", i)
		}
	}
	out.SetupS = time.Since(t0).Seconds()
	if len(readyTimes) > 0 {
		ready := summarize(readyTimes)
		out.Ready = &ready
	}
	time.Sleep(2 * time.Second)
	out.Open = measure(o, ids)
	if o.sessionsHold > 0 {
		logf("%d sessions open; holding them %s", o.sessions, o.sessionsHold)
		time.Sleep(o.sessionsHold)
	}
	select {
	case err := <-errs:
		return nil, err
	default:
	}

	// The client goes (as a killed kubectl): the runtime ends the sessions.
	cancel()
	for _, w := range stdins {
		_ = w.Close()
	}
	wg.Wait()
	time.Sleep(3 * time.Second)
	out.After = measure(o, ids)

	k := float64(o.sessions)
	if out.Open.DaemonRssKiB != nil && out.Before.DaemonRssKiB != nil {
		rss := (*out.Open.DaemonRssKiB - *out.Before.DaemonRssKiB) / k
		pss := (*out.Open.DaemonPssKiB - *out.Before.DaemonPssKiB) / k
		out.PerSession.DaemonRssKiB, out.PerSession.DaemonPssKiB = &rss, &pss
	}
	out.PerSession.MonitorRssKiB = (out.Open.MonitorRssKiB - out.Before.MonitorRssKiB) / k
	out.PerSession.MonitorPssKiB = (out.Open.MonitorPssKiB - out.Before.MonitorPssKiB) / k
	return out, nil
}
