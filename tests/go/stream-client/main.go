// stream-client drives the Kubernetes CRI streaming endpoints (exec, attach, portforward)
// at the one-time URLs that a CRI runtime returns from Exec, Attach and PortForward, with
// client-go's own code as kubectl uses it: k8s.io/client-go/tools/remotecommand (SPDY/3.1
// or WebSocket) and k8s.io/client-go/tools/portforward (SPDY/3.1). The URL carries
// everything, so no credentials are sent; http:// and https:// (certificate unchecked)
// both work, and no proxy is ever used.
//
// It is a test client of wharf's suite:
//
//	stream-client exec --url URL [--transport spdy|websocket] [--protocols P,...]
//	    [--tty] [--stdin] [--resize WxH[,WxH...]] [--timeout 30s]
//	stream-client attach ... (the same flags: the same code path)
//	    Copies os.Stdin (with --stdin) and the remote stdout/stderr (stderr is merged
//	    into stdout by the server with --tty). The --resize sizes are sent in order
//	    (client-go sends them only with --tty). Exits with the remote exit code, 0 on
//	    success.
//	stream-client portforward --url URL --ports LOCAL:REMOTE[,...] [--address 127.0.0.1]
//	    Prints "ready LOCAL REMOTE" per port once listening (LOCAL 0 picks a free port,
//	    the line names it), then forwards until stdin reaches EOF or SIGTERM/SIGINT,
//	    and exits 0.
//	stream-client probe --url URL [--transport spdy|websocket] [--protocols P,...]
//	    [--method POST] [--timeout 10s]
//	    Sends the upgrade request only and prints "status CODE protocol PROTOCOL" (the
//	    negotiated X-Stream-Protocol-Version, or Sec-WebSocket-Protocol with
//	    websocket; "-" when the response has none); a non-101 response's body goes to
//	    stderr. Exits 0 on any HTTP response.
//	stream-client pf-pairs --url URL --ports P1,P2,... [--timeout 20s]
//	    Checks a portforward URL at the stream level, as client-go's PortForwarder
//	    drives it per local connection, on ONE SPDY connection (portforward.k8s.io):
//	    for each port in order, with requestID its index, an error stream then a
//	    data stream (headers streamType, port, requestID), "GET / HTTP/1.0" written
//	    to the data stream and its write side closed, and both streams read to EOF.
//	    Prints one line per port: "port P ok FIRST-LINE" (the first line of the data,
//	    trimmed) when data came back, else "port P error TEXT" (the error stream's
//	    text, on one line), else "port P failed ERROR" (a local error). Then repeats
//	    the first port on the same connection (requestID the number of ports) and
//	    prints "again P ..." the same way. Exits 0 once that line is out, whatever the
//	    ports' outcomes; a lost or refused connection or the timeout exit 255.
//
// Failures of stream-client itself (bad flags, a refused upgrade, a lost connection, the
// timeout) print "stream-client: ERROR" to stderr and exit 255; a remote command that
// exits 255 is told apart by that line.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/klog/v2"
)

const usage = `usage:
  stream-client exec|attach --url URL [--transport spdy|websocket] [--protocols P,...] [--tty] [--stdin] [--resize WxH[,WxH...]] [--timeout 30s]
  stream-client portforward --url URL --ports LOCAL:REMOTE[,...] [--address 127.0.0.1]
  stream-client probe --url URL [--transport spdy|websocket] [--protocols P,...] [--method POST] [--timeout 10s]
  stream-client pf-pairs --url URL --ports P1,P2,... [--timeout 20s]
`

// The subprotocols client-go's executors offer: NewSPDYExecutor's list, and for
// WebSocket v5 (all NewWebSocketExecutor offers) then v4, which is the newest that
// kubelet's streaming server (k8s.io/cri-streaming) speaks over WebSocket.
var (
	spdyProtocols = []string{"v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"}
	wsProtocols   = []string{"v5.channel.k8s.io", "v4.channel.k8s.io"}
)

func fail(err error) {
	fmt.Fprintf(os.Stderr, "stream-client: %v\n", err)
	os.Exit(255)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(255)
	}
	mode, args := os.Args[1], os.Args[2:]
	var err error
	switch mode {
	case "exec", "attach":
		err = runRemoteCommand(mode, args)
	case "portforward":
		err = runPortForward(args)
	case "probe":
		err = runProbe(args)
	case "pf-pairs":
		err = runPFPairs(args)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		err = fmt.Errorf("unknown mode %q\n%s", mode, usage)
	}
	if err != nil {
		fail(err)
	}
}

// newFlags returns a flag set for mode with the flags every mode has.
func newFlags(mode string) (*flag.FlagSet, *string, *int) {
	fs := flag.NewFlagSet("stream-client "+mode, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	rawURL := fs.String("url", "", "the one-time streaming URL")
	verbosity := fs.Int("v", 0, "client-go (klog) log verbosity, to stderr")
	return fs, rawURL, verbosity
}

// parseFlags parses args and checks --url, setting klog's verbosity.
func parseFlags(fs *flag.FlagSet, args []string, rawURL *string, verbosity *int) (*url.URL, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var klogFlags flag.FlagSet
	klog.InitFlags(&klogFlags)
	if err := klogFlags.Set("v", strconv.Itoa(*verbosity)); err != nil {
		return nil, err
	}
	if *rawURL == "" {
		return nil, errors.New("--url is required")
	}
	u, err := url.Parse(*rawURL)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url %q: want http://HOST:PORT/... or https://HOST:PORT/...", *rawURL)
	}
	return u, nil
}

// restConfig is what kubectl would build, less everything the one-time URL makes moot:
// no credentials, no proxy, and no certificate check for https.
func restConfig(u *url.URL) *rest.Config {
	return &rest.Config{
		Host:            u.Scheme + "://" + u.Host,
		TLSClientConfig: rest.TLSClientConfig{Insecure: u.Scheme == "https"},
		Proxy:           func(*http.Request) (*url.URL, error) { return nil, nil },
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// sizeQueue yields the --resize sizes in order, then blocks until the stream ends.
type sizeQueue struct {
	sizes []remotecommand.TerminalSize
	done  <-chan struct{}
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	if len(q.sizes) > 0 {
		size := q.sizes[0]
		q.sizes = q.sizes[1:]
		return &size
	}
	<-q.done
	return nil
}

func parseSizes(s string) ([]remotecommand.TerminalSize, error) {
	var sizes []remotecommand.TerminalSize
	for _, item := range splitList(s) {
		w, h, ok := strings.Cut(item, "x")
		width, werr := strconv.ParseUint(w, 10, 16)
		height, herr := strconv.ParseUint(h, 10, 16)
		if !ok || werr != nil || herr != nil {
			return nil, fmt.Errorf("--resize %q: want WIDTHxHEIGHT", item)
		}
		sizes = append(sizes, remotecommand.TerminalSize{Width: uint16(width), Height: uint16(height)})
	}
	return sizes, nil
}

func runRemoteCommand(mode string, args []string) error {
	fs, rawURL, verbosity := newFlags(mode)
	transport := fs.String("transport", "spdy", "spdy or websocket")
	protocols := fs.String("protocols", "", "subprotocols to offer, comma-separated (default: client-go's for the transport; see the source)")
	tty := fs.Bool("tty", false, "ask for a terminal (the server merges stderr into stdout)")
	stdin := fs.Bool("stdin", false, "send os.Stdin, closing the remote stdin at EOF")
	resize := fs.String("resize", "", "terminal sizes WxH[,WxH...] to send in order (with --tty)")
	timeout := fs.Duration("timeout", 30*time.Second, "limit on the whole stream")
	u, err := parseFlags(fs, args, rawURL, verbosity)
	if err != nil {
		return err
	}
	sizes, err := parseSizes(*resize)
	if err != nil {
		return err
	}

	config := restConfig(u)
	var executor remotecommand.Executor
	switch *transport {
	case "spdy":
		if *protocols == "" {
			executor, err = remotecommand.NewSPDYExecutor(config, "POST", u)
		} else {
			var rt http.RoundTripper
			var upgrader spdy.Upgrader
			rt, upgrader, err = spdy.RoundTripperFor(config)
			if err == nil {
				executor, err = remotecommand.NewSPDYExecutorForProtocols(rt, upgrader, "POST", u, splitList(*protocols)...)
			}
		}
	case "websocket":
		offered := wsProtocols
		if *protocols != "" {
			offered = splitList(*protocols)
		}
		executor, err = remotecommand.NewWebSocketExecutorForProtocols(config, "GET", u.String(), offered...)
	default:
		return fmt.Errorf("--transport %q: want spdy or websocket", *transport)
	}
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	options := remotecommand.StreamOptions{
		Stdout: os.Stdout,
		Tty:    *tty,
	}
	if *stdin {
		options.Stdin = os.Stdin
	}
	if !*tty {
		options.Stderr = os.Stderr
	}
	if len(sizes) > 0 {
		options.TerminalSizeQueue = &sizeQueue{sizes: sizes, done: ctx.Done()}
	}
	err = executor.StreamWithContext(ctx, options)
	var exitErr utilexec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		cancel()
		os.Exit(exitErr.ExitStatus())
	}
	return err
}

// listenFailures counts the ports the PortForwarder could not listen on (it reports
// them on errOut and goes on with the others, as kubectl does).
type listenFailures struct{ count atomic.Int32 }

func (l *listenFailures) Write(p []byte) (int, error) {
	if strings.Contains(string(p), "Unable to listen on port") {
		l.count.Add(1)
	}
	return os.Stderr.Write(p)
}

func runPortForward(args []string) error {
	fs, rawURL, verbosity := newFlags("portforward")
	ports := fs.String("ports", "", "LOCAL:REMOTE[,LOCAL:REMOTE...]; LOCAL 0 picks a free port")
	address := fs.String("address", "127.0.0.1", "local addresses to listen on, comma-separated")
	u, err := parseFlags(fs, args, rawURL, verbosity)
	if err != nil {
		return err
	}
	if len(splitList(*ports)) == 0 {
		return errors.New("--ports is required")
	}

	rt, upgrader, err := spdy.RoundTripperFor(restConfig(u))
	if err != nil {
		return err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	stop := make(chan struct{})
	ready := make(chan struct{})
	failures := &listenFailures{}
	// The forwarder's own chatter ("Forwarding from", "Handling connection for") goes to
	// stderr: stdout carries only the ready lines.
	forwarder, err := portforward.NewOnAddresses(dialer, splitList(*address), splitList(*ports),
		stop, ready, os.Stderr, failures)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- forwarder.ForwardPorts() }()

	select {
	case err := <-done:
		if err == nil {
			err = errors.New("port forwarding ended before it was ready")
		}
		return err
	case <-ready:
	}
	if n := failures.count.Load(); n > 0 {
		close(stop)
		<-done
		return fmt.Errorf("could not listen on %d of the ports", n)
	}
	forwarded, err := forwarder.GetPorts()
	if err != nil {
		return err
	}
	for _, p := range forwarded {
		fmt.Printf("ready %d %d\n", p.Local, p.Remote)
	}

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-done:
		if err == nil {
			err = errors.New("port forwarding ended")
		}
		return err
	case <-stdinClosed:
	case <-signals:
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return errors.New("port forwarding did not stop within 10s")
	}
	return nil
}

func runProbe(args []string) error {
	fs, rawURL, verbosity := newFlags("probe")
	transport := fs.String("transport", "spdy", "spdy (Upgrade: SPDY/3.1) or websocket")
	protocols := fs.String("protocols", "", "subprotocols to offer, comma-separated; --protocols= offers none (default: client-go's exec list for the transport)")
	method := fs.String("method", "", "request method (default POST for spdy, GET for websocket)")
	timeout := fs.Duration("timeout", 10*time.Second, "limit on connecting and reading the response")
	protocolsSet := false
	u, err := parseFlags(fs, args, rawURL, verbosity)
	if err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) { protocolsSet = protocolsSet || f.Name == "protocols" })

	offered := splitList(*protocols)
	req := &http.Request{Method: *method, URL: u, Host: u.Host, Header: http.Header{}}
	req.Header.Set("Connection", "Upgrade")
	switch *transport {
	case "spdy":
		if !protocolsSet {
			offered = spdyProtocols
		}
		if req.Method == "" {
			req.Method = "POST"
		}
		req.Header.Set("Upgrade", "SPDY/3.1")
		for _, p := range offered {
			req.Header.Add("X-Stream-Protocol-Version", p)
		}
	case "websocket":
		if !protocolsSet {
			offered = wsProtocols
		}
		if req.Method == "" {
			req.Method = "GET"
		}
		key := make([]byte, 16)
		_, _ = rand.Read(key)
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key))
		if len(offered) > 0 {
			req.Header.Set("Sec-WebSocket-Protocol", strings.Join(offered, ", "))
		}
	default:
		return fmt.Errorf("--transport %q: want spdy or websocket", *transport)
	}

	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80", "https": "443"}[u.Scheme])
	}
	netDialer := &net.Dialer{Timeout: *timeout}
	var conn net.Conn
	if u.Scheme == "https" {
		conn, err = tls.DialWithDialer(netDialer, "tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) //nolint:gosec // a test client of one-time URLs
	} else {
		conn, err = netDialer.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(*timeout))
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("writing the request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fmt.Errorf("reading the response: %w", err)
	}
	negotiated := resp.Header.Get("X-Stream-Protocol-Version")
	if *transport == "websocket" {
		negotiated = resp.Header.Get("Sec-WebSocket-Protocol")
	}
	if negotiated == "" {
		negotiated = "-"
	}
	fmt.Printf("status %d protocol %s\n", resp.StatusCode, negotiated)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if text := strings.TrimSpace(string(body)); text != "" {
			fmt.Fprintln(os.Stderr, text)
		}
	}
	return nil
}

const (
	// pfRequest is what pf-pairs sends on each data stream.
	pfRequest = "GET / HTTP/1.0\r\n\r\n"
	// pfErrorGrace is how long pf-pairs waits for the error stream's end when the data
	// stream could not be created. kubelet's server resets the data stream as soon as
	// the port's forwarding fails, which can come before its reply to the stream (the
	// creation then fails with "Stream reset"), and it writes the error stream's text
	// and resets that stream first.
	pfErrorGrace = 2 * time.Second
)

func runPFPairs(args []string) error {
	fs, rawURL, verbosity := newFlags("pf-pairs")
	ports := fs.String("ports", "", "remote ports P1,P2,... to forward to in turn, on one connection")
	timeout := fs.Duration("timeout", 20*time.Second, "limit on the whole run")
	u, err := parseFlags(fs, args, rawURL, verbosity)
	if err != nil {
		return err
	}
	var remote []uint16
	for _, item := range splitList(*ports) {
		port, err := strconv.ParseUint(item, 10, 16)
		if err != nil || port == 0 {
			return fmt.Errorf("--ports %q: want a port from 1 to 65535", item)
		}
		remote = append(remote, uint16(port))
	}
	if len(remote) == 0 {
		return errors.New("--ports is required")
	}

	deadline := time.After(*timeout)
	rt, upgrader, err := spdy.RoundTripperFor(restConfig(u))
	if err != nil {
		return err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	type dialResult struct {
		conn     httpstream.Connection
		protocol string
		err      error
	}
	dialed := make(chan dialResult, 1)
	go func() {
		conn, protocol, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		dialed <- dialResult{conn, protocol, err}
	}()
	var conn httpstream.Connection
	select {
	case <-deadline:
		return fmt.Errorf("timed out after %v upgrading the connection", *timeout)
	case r := <-dialed:
		if r.err != nil {
			return fmt.Errorf("error upgrading connection: %w", r.err)
		}
		conn = r.conn
		defer conn.Close()
		if r.protocol != portforward.PortForwardProtocolV1Name {
			return fmt.Errorf("unable to negotiate protocol: client supports %q, server returned %q",
				portforward.PortForwardProtocolV1Name, r.protocol)
		}
	}

	// forward runs one error/data stream pair and prints its line.
	forward := func(label string, port uint16, requestID int) error {
		done := make(chan pfOutcome, 1)
		go func() { done <- pfPair(conn, port, requestID) }()
		var outcome pfOutcome
		select {
		case <-deadline:
			return fmt.Errorf("timed out after %v on port %d (requestID %d)", *timeout, port, requestID)
		case outcome = <-done:
		}
		if outcome.connErr != nil {
			return outcome.connErr
		}
		fmt.Printf("%s %d %s\n", label, port, outcome.line)
		select {
		case <-conn.CloseChan():
			return fmt.Errorf("the connection closed after port %d (requestID %d)", port, requestID)
		default:
		}
		return nil
	}
	for i, port := range remote {
		if err := forward("port", port, i); err != nil {
			return err
		}
	}
	return forward("again", remote[0], len(remote))
}

// pfOutcome is how one error/data stream pair went: line is what follows "port P",
// connErr a failure of the connection itself.
type pfOutcome struct {
	line    string
	connErr error
}

// pfPair does on conn what client-go's PortForwarder.handleConnection does for one local
// connection, with pfRequest as the local connection's bytes: it creates the error
// stream (closing its write side at once) and the data stream with the same port and
// requestID headers, writes pfRequest to the data stream and half-closes it, and reads
// both streams to EOF, resetting the data stream once it is done and removing both from
// the connection at the end. When the data stream cannot be created, the error stream's
// text, if it comes within pfErrorGrace, is the outcome (see pfErrorGrace).
func pfPair(conn httpstream.Connection, port uint16, requestID int) pfOutcome {
	// createStream fails a stream creation as the connection's failure when the
	// connection is gone, as this port's otherwise.
	createStream := func(headers http.Header) (httpstream.Stream, *pfOutcome) {
		stream, err := conn.CreateStream(headers)
		if err == nil {
			return stream, nil
		}
		err = fmt.Errorf("creating the %s stream for port %d (requestID %d): %w",
			headers.Get(v1.StreamType), port, requestID, err)
		select {
		case <-conn.CloseChan():
			return nil, &pfOutcome{connErr: err}
		default:
			return nil, &pfOutcome{line: "failed " + err.Error()}
		}
	}

	headers := http.Header{}
	headers.Set(v1.StreamType, v1.StreamTypeError)
	headers.Set(v1.PortHeader, strconv.Itoa(int(port)))
	headers.Set(v1.PortForwardRequestIDHeader, strconv.Itoa(requestID))
	errorStream, failed := createStream(headers)
	if failed != nil {
		return *failed
	}
	_ = errorStream.Close()
	defer conn.RemoveStreams(errorStream)
	type readResult struct {
		data []byte
		err  error
	}
	errorRead := make(chan readResult, 1)
	go func() {
		message, err := io.ReadAll(errorStream)
		errorRead <- readResult{message, err}
	}()

	headers.Set(v1.StreamType, v1.StreamTypeData)
	dataStream, failed := createStream(headers)
	if failed != nil {
		if failed.connErr == nil {
			select {
			case message := <-errorRead:
				if text := strings.TrimSpace(string(message.data)); text != "" {
					return pfOutcome{line: "error " + oneLine(text)}
				}
			case <-time.After(pfErrorGrace):
			}
			_ = errorStream.Reset()
		}
		return *failed
	}
	defer conn.RemoveStreams(dataStream)
	dataRead := make(chan readResult, 1)
	go func() {
		// Keep the start of the data, enough for its first line; read the rest to EOF.
		reader := bufio.NewReader(dataStream)
		first, err := reader.ReadString('\n')
		if err == nil {
			_, err = io.Copy(io.Discard, reader)
		}
		if errors.Is(err, io.EOF) {
			err = nil
		}
		dataRead <- readResult{[]byte(first), err}
	}()

	var localErrs []string
	if _, err := io.WriteString(dataStream, pfRequest); err != nil {
		localErrs = append(localErrs, fmt.Sprintf("writing the request: %v", err))
	}
	if err := dataStream.Close(); err != nil {
		localErrs = append(localErrs, fmt.Sprintf("closing the data stream's write side: %v", err))
	}
	data := <-dataRead
	_ = dataStream.Reset()
	message := <-errorRead
	if data.err != nil {
		localErrs = append(localErrs, fmt.Sprintf("reading the data stream: %v", data.err))
	}
	if message.err != nil {
		localErrs = append(localErrs, fmt.Sprintf("reading the error stream: %v", message.err))
	}

	switch {
	case len(data.data) > 0:
		return pfOutcome{line: strings.TrimSpace("ok " + strings.TrimSpace(string(data.data)))}
	case len(strings.TrimSpace(string(message.data))) > 0:
		return pfOutcome{line: "error " + oneLine(strings.TrimSpace(string(message.data)))}
	case len(localErrs) > 0:
		return pfOutcome{line: "failed " + strings.Join(localErrs, "; ")}
	default:
		return pfOutcome{line: "failed no data and no error came back"}
	}
}

// oneLine puts text on one line, each line break a space.
func oneLine(text string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(text)
}
