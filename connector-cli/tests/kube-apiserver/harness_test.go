package kubeapiserver

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// hangGuard bounds every wait on a log line, so a broken build fails instead of hanging.
const hangGuard = 60 * time.Second

// process is a running `connector` child whose stderr lines are collected.
type process struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	more  chan struct{}
}

// reporter is what the harness needs of a *testing.T; TestMain uses mainReporter.
type reporter interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// mainReporter fails the whole run from TestMain.
type mainReporter struct{}

func (mainReporter) Helper() {}
func (mainReporter) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, args...)
	killChildren()
	os.Exit(1)
}
func (m mainReporter) Fatalf(format string, args ...any) { m.Fatal(fmt.Sprintf(format, args...)) }

var (
	childrenMu sync.Mutex
	children   []*exec.Cmd
)

func killChildren() {
	childrenMu.Lock()
	defer childrenMu.Unlock()
	for _, cmd := range children {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	children = nil
}

// start runs `connector ARGS...`; it is killed when the test binary finishes.
func start(t reporter, args ...string) *process {
	t.Helper()
	bin := os.Getenv("CONNECTOR_BIN")
	if bin == "" {
		t.Fatal("CONNECTOR_BIN must name the connector binary (make test sets it)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "CONNECTOR_LOG=info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	p := &process{cmd: cmd, more: make(chan struct{}, 1)}
	go func() {
		scanner := bufio.NewScanner(stderr)
		for scanner.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, scanner.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
	}()
	childrenMu.Lock()
	children = append(children, cmd)
	childrenMu.Unlock()
	return p
}

// waitFor returns the first log line (already seen or still to come) that contains every needle.
func (p *process) waitFor(t reporter, needles ...string) string {
	t.Helper()
	deadline := time.After(hangGuard)
	for {
		p.mu.Lock()
		for _, line := range p.lines {
			if containsAll(line, needles) {
				p.mu.Unlock()
				return line
			}
		}
		seen := strings.Join(p.lines, "\n")
		p.mu.Unlock()
		select {
		case <-p.more:
		case <-deadline:
			t.Fatalf("no log line with %q; saw:\n%s", needles, seen)
		}
	}
}

// dump writes the last n log lines, to explain a failure.
func (p *process) dump(w io.Writer, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := p.lines
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(w, "--- last %d log lines of connector %s:\n%s\n", len(lines), p.cmd.Args[1], strings.Join(lines, "\n"))
}

func containsAll(line string, needles []string) bool {
	for _, n := range needles {
		if !strings.Contains(line, n) {
			return false
		}
	}
	return true
}

// listenAddr is the value of a log line's `listen=` field without its scheme.
func listenAddr(line string) string {
	value := strings.Fields(line[strings.LastIndex(line, "listen=")+len("listen="):])[0]
	if i := strings.Index(value, "://"); i >= 0 {
		value = value[i+3:]
	}
	return value
}

// tunnel is one `connector server` with every frontend enabled, one agent
// (node-a, serving 127.0.0.1) and the certificates a kube-apiserver would hold.
type tunnel struct {
	dir        string
	connectUDS string
	connectTLS string
	grpcUDS    string
	grpcTLS    string
	// clientTLS is what kube-apiserver presents to the TLS frontends.
	clientTLS *tls.Config
	server    *process
}

// shared is the tunnel every test uses, started by TestMain.
var shared *tunnel

func TestMain(m *testing.M) {
	shared = newTunnel(mainReporter{})
	code := m.Run()
	if code != 0 {
		shared.server.dump(os.Stderr, 60)
	}
	killChildren()
	os.RemoveAll(shared.dir)
	os.Exit(code)
}

func newTunnel(t reporter) *tunnel {
	return newTunnelWith(t, "10s")
}

// newTunnelWith starts a tunnel whose server has this --dial-timeout and extra flags.
func newTunnelWith(t reporter, dialTimeout string, extraServerArgs ...string) *tunnel {
	dir, err := os.MkdirTemp("", "connector-kube-apiserver-")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(os.Getenv("CONNECTOR_BIN"), "dev-pki", "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("dev-pki: %v\n%s", err, out)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	// node-a may serve its name and the loopback network; its policy allows
	// only 127.0.0.1, so 127.0.0.2 reaches the agent and is denied there.
	const identifiers = "host=node-a,ipv4=127.0.0.1,cidr=127.0.0.0/8"
	token, err := os.ReadFile(f("node-a.token"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f("tokens"), []byte(fmt.Sprintf("%s node-a %s\n", strings.TrimSpace(string(token)), identifiers)), 0o600); err != nil {
		t.Fatal(err)
	}
	tn := &tunnel{dir: dir, connectUDS: f("connect.sock"), grpcUDS: f("grpc.sock")}
	args := []string{"server", "--listen", "127.0.0.1:0", "--server-id", "srv-go",
		"--cert", f("server.pem"), "--key", f("server-key.pem"), "--tokens", f("tokens"),
		"--connect-uds", tn.connectUDS, "--connect-tls", "127.0.0.1:0",
		"--grpc-uds", tn.grpcUDS, "--grpc-tls", "127.0.0.1:0",
		"--frontend-cert", f("server.pem"), "--frontend-key", f("server-key.pem"),
		"--frontend-client-ca", f("frontend-client-ca.pem"),
		"--dial-timeout", dialTimeout}
	server := start(t, append(args, extraServerArgs...)...)
	tn.server = server
	quic := listenAddr(server.waitFor(t, "accepting agents"))
	tn.connectTLS = listenAddr(server.waitFor(t, "HTTP CONNECT frontend listening", "tls://"))
	server.waitFor(t, "HTTP CONNECT frontend listening", "unix://")
	tn.grpcTLS = listenAddr(server.waitFor(t, "gRPC", "frontend listening", "tls://"))
	server.waitFor(t, "gRPC", "frontend listening", "unix://")

	agent := start(t, "agent", "--server", quic, "--server-name", "localhost", "--agent-id", "node-a",
		"--ca", f("ca.pem"), "--token-file", f("node-a.token"),
		"--identifiers", identifiers, "--allow", "127.0.0.1/32")
	agent.waitFor(t, "connected", "srv-go")
	server.waitFor(t, "agent connected", "agent=node-a")

	cert, err := tls.LoadX509KeyPair(f("apiserver.pem"), f("apiserver-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tn.clientTLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool(t, f("ca.pem")),
		ServerName:   "localhost",
		MinVersion:   tls.VersionTLS12,
	}
	return tn
}

func pool(t reporter, path string) *x509.CertPool {
	pem, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificates in %s", path)
	}
	return p
}

// targets: an HTTPS and a plain HTTP server on 127.0.0.1 that say who they are.
func httpTargets(t *testing.T) (https *httptest.Server, plain *httptest.Server) {
	handler := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s %s", name, r.Method, r.URL.Path)
		})
	}
	https = httptest.NewTLSServer(handler("kubelet-tls"))
	plain = httptest.NewServer(handler("webhook-plain"))
	t.Cleanup(https.Close)
	t.Cleanup(plain.Close)
	return https, plain
}

func get(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	return string(body)
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
