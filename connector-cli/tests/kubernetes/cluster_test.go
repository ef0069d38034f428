package kubernetes

// The cluster every test shares, started by the first test that needs it:
// etcd, `connector server` (HTTP CONNECT and gRPC frontends on Unix sockets,
// HTTP CONNECT over TCP with mutual TLS) and kube-apiserver in the control
// plane's namespace; the kubelet stand-in and `connector agent` in the node's. kube-apiserver runs in one egress mode
// at a time and is restarted to switch.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	binDirEnv       = "KUBE_BIN_DIR"  // kube-apiserver, kubectl and etcd (build.sh)
	connectorBinEnv = "CONNECTOR_BIN" // the connector binary
	apiserverPort   = "6443"
	agentToken      = "node-1-static-token-0123456789abcdef"
	// agentIdentifiers is what the node's agent serves: its node name and
	// the node's address. The token may claim exactly these.
	agentIdentifiers = "host=" + nodeName + ",ipv4=" + nodeIP
)

// egressMode is one way kube-apiserver reaches connector server.
type egressMode struct {
	name string
	// connection is the EgressSelectorConfiguration's `connection` for it.
	connection func(c *cluster) string
}

var (
	httpConnectUDS = egressMode{name: "HTTPConnect-UDS", connection: func(c *cluster) string {
		return fmt.Sprintf(`{proxyProtocol: HTTPConnect, transport: {uds: {udsName: %q}}}`, c.connectUDS)
	}}
	grpcUDS = egressMode{name: "GRPC-UDS", connection: func(c *cluster) string {
		return fmt.Sprintf(`{proxyProtocol: GRPC, transport: {uds: {udsName: %q}}}`, c.grpcUDS)
	}}
	httpConnectTLS = egressMode{name: "HTTPConnect-TCP-mTLS", connection: func(c *cluster) string {
		return fmt.Sprintf(`{proxyProtocol: HTTPConnect, transport: {tcp: {url: %q, tlsConfig: {caBundle: %q, clientCert: %q, clientKey: %q}}}}`,
			"https://"+c.connectTLS, c.pki.connectorCA, c.pki.egressClientCert, c.pki.egressClientKey)
	}}
)

// workDir holds this run's files: certificates, sockets, logs.
var workDir string

type cluster struct {
	cpNS, nodeNS string
	bin          struct{ apiserver, kubectl, etcd, connector, self string }
	pki          *pki
	logDir       string // the kubelet stand-in's container logs
	connectUDS   string
	grpcUDS      string
	connectTLS   string // the HTTP CONNECT frontend's TCP address
	tokens       string // connector server's tokens file
	tokenFile    string // the agent's token file

	etcd, server, agent, kubelet *proc
	quicAddr                     string // connector server's agent listener
	serverAdmin                  string // connector server's admin address

	apiserver     *proc
	apiserverMode egressMode
	objects       bool // the Node and the Pod exist
}

var (
	shared     *cluster
	sharedErr  error
	sharedOnce sync.Once
)

// runControlPlane runs the tests inside the control plane's namespace.
func runControlPlane(m *testing.M) int {
	dir, err := os.MkdirTemp("", "connector-kubernetes-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	workDir = dir
	if err := os.Mkdir(filepath.Join(dir, "logs"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		dumpLogs()
	}
	stopAll()
	if os.Getenv("E2E_KEEP") != "" {
		fmt.Fprintln(os.Stderr, "E2E_KEEP: the run's files are in", dir)
	} else {
		os.RemoveAll(dir)
	}
	return code
}

// dumpLogs shows the end of every process's log, to explain a failure.
func dumpLogs() {
	procsMu.Lock()
	defer procsMu.Unlock()
	for _, p := range procs {
		fmt.Fprintf(os.Stderr, "--- last lines of %s (%v):\n%s\n", p.name, p.cmd.Args, p.tail(40))
	}
}

// env is the shared cluster, started on first use; a failed start fails
// every test that needs it.
func env(t *testing.T) *cluster {
	t.Helper()
	sharedOnce.Do(func() {
		shared, sharedErr = startCluster(t)
	})
	if sharedErr != nil {
		t.Fatalf("starting the cluster: %v", sharedErr)
	}
	return shared
}

func binary(dir, name string) (string, error) {
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s: %w (build.sh builds it; `make test-kubernetes` runs both)", path, err)
	}
	return path, nil
}

func startCluster(t *testing.T) (c *cluster, err error) {
	c = &cluster{cpNS: os.Getenv(cpNSEnv), nodeNS: os.Getenv(nodeNSEnv)}
	binDir := os.Getenv(binDirEnv)
	if binDir == "" {
		return nil, fmt.Errorf("%s must name the directory of kube-apiserver, kubectl and etcd (build.sh)", binDirEnv)
	}
	for name, dst := range map[string]*string{"kube-apiserver": &c.bin.apiserver, "kubectl": &c.bin.kubectl, "etcd": &c.bin.etcd} {
		if *dst, err = binary(binDir, name); err != nil {
			return nil, err
		}
	}
	if c.bin.connector = os.Getenv(connectorBinEnv); c.bin.connector == "" {
		return nil, fmt.Errorf("%s must name the connector binary", connectorBinEnv)
	}
	if c.bin.self, err = os.Executable(); err != nil {
		return nil, err
	}
	t.Logf("components: %s", strings.Join([]string{
		firstLine(c.bin.apiserver, "--version"), "kubectl " + strings.TrimPrefix(firstLine(c.bin.kubectl, "version", "--client"), "Client Version: "),
		firstLine(c.bin.etcd, "--version"), firstLine(c.bin.connector, "--version"),
	}, ", "))
	c.pki = newPKI(workDir, serverIP, nodeIP, nodeName)
	c.logDir = filepath.Join(workDir, "containers")
	if err := os.Mkdir(c.logDir, 0o755); err != nil {
		return nil, err
	}
	c.connectUDS = filepath.Join(workDir, "connect.sock")
	c.grpcUDS = filepath.Join(workDir, "grpc.sock")
	c.tokens = filepath.Join(workDir, "tokens")
	write(c.tokens, []byte(fmt.Sprintf("%s %s %s\n", agentToken, nodeName, agentIdentifiers)))
	c.tokenFile = filepath.Join(workDir, "node-1.token")
	write(c.tokenFile, []byte(agentToken+"\n"))

	c.etcd, err = spawn("etcd", "", nil, c.bin.etcd, "--name", "e2e", "--data-dir", filepath.Join(workDir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e2e=http://127.0.0.1:2380", "--unsafe-no-fsync")
	if err != nil {
		return nil, err
	}
	if _, err := c.etcd.await(0, startGuard, "ready to serve client requests"); err != nil {
		return nil, err
	}

	c.server, err = spawn("connector-server", "", []string{"CONNECTOR_LOG=info,connector_core::frontend=debug"}, c.bin.connector,
		"server", "--listen", serverIP+":0", "--server-id", "cp-1",
		"--cert", c.pki.connectorServerCert, "--key", c.pki.connectorServerKey, "--tokens", c.tokens,
		"--connect-uds", c.connectUDS, "--grpc-uds", c.grpcUDS, "--connect-tls", "127.0.0.1:0",
		"--frontend-cert", c.pki.frontendCert, "--frontend-key", c.pki.frontendKey,
		"--frontend-client-ca", c.pki.frontendClientCA, "--frontend-allow-client", "kube-apiserver",
		"--admin", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	line, err := c.server.await(0, startGuard, "accepting agents")
	if err != nil {
		return nil, err
	}
	c.quicAddr = fieldValue(line, "listen")
	for _, needles := range [][]string{{"HTTP CONNECT frontend listening", "unix://"}, {"gRPC", "frontend listening", "unix://"}} {
		if _, err := c.server.await(0, startGuard, needles...); err != nil {
			return nil, err
		}
	}
	if line, err = c.server.await(0, startGuard, "HTTP CONNECT frontend listening", "tls://"); err != nil {
		return nil, err
	}
	c.connectTLS = fieldValue(line, "listen")
	if line, err = c.server.await(0, startGuard, "admin endpoints listening"); err != nil {
		return nil, err
	}
	c.serverAdmin = fieldValue(line, "listen")

	c.kubelet, err = spawn("kubelet-stand-in", c.nodeNS, []string{
		roleEnv + "=kubelet", kubeletCAEnv + "=" + c.pki.kubeCA, kubeletCertEnv + "=" + c.pki.kubeletCert,
		kubeletKeyEnv + "=" + c.pki.kubeletKey, kubeletLogsEnv + "=" + c.logDir,
	}, c.bin.self)
	if err != nil {
		return nil, err
	}
	if _, err := c.kubelet.await(0, startGuard, kubeletReady); err != nil {
		return nil, err
	}
	if err := c.startAgent(); err != nil {
		return nil, err
	}
	return c, nil
}

// firstLine is the first line a command prints (a version).
func firstLine(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s: %v", filepath.Base(bin), err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}

// fieldValue is the value of a `key=value` field of a connector log line,
// without a URL scheme.
func fieldValue(line, key string) string {
	i := strings.LastIndex(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	value := strings.Fields(line[i+len(key)+2:])[0]
	if j := strings.Index(value, "://"); j >= 0 {
		value = value[j+3:]
	}
	return value
}

// startAgent starts the node's agent and waits until connector server has
// admitted it.
func (c *cluster) startAgent() error {
	mark := c.server.mark()
	agent, err := spawn("connector-agent", c.nodeNS, []string{"CONNECTOR_LOG=info"}, c.bin.connector,
		"agent", "--server", c.quicAddr, "--ca", c.pki.connectorCA, "--agent-id", nodeName,
		"--token-file", c.tokenFile, "--identifiers", agentIdentifiers, "--allow", nodeIP+"/32",
		// kube-apiserver keeps idle connections to the kubelet open; a short
		// drain lets a stopped agent exit without waiting for them.
		"--drain-grace", "1s")
	if err != nil {
		return err
	}
	c.agent = agent
	_, err = c.server.await(mark, hangGuard, "agent connected", "agent="+nodeName)
	return err
}

// stopAgent stops the node's agent as Kubernetes does (SIGTERM: it drains,
// closes its sessions and exits) and waits until connector server no longer
// routes to it (it is gone from the server's /agents).
func (c *cluster) stopAgent(t *testing.T) {
	t.Helper()
	c.agent.stop()
	if err := c.agent.exitErr(); err != nil {
		t.Fatalf("connector agent did not exit cleanly on SIGTERM: %v\n%s", err, c.agent.tail(20))
	}
	waitUntil(t, "connector server to drop "+nodeName+" from /agents", func() (bool, string) {
		agents, err := serverAgents(c.serverAdmin)
		if err != nil {
			return false, err.Error()
		}
		return !slices.Contains(agents.connected(), nodeName), fmt.Sprint(agents.connected())
	})
}

// agentsPage is connector server's admin page /agents.
type agentsPage struct {
	ServerID string `json:"server_id"`
	Agents   []struct {
		AgentID     string `json:"agent_id"`
		Identity    string `json:"identity"`
		Identifiers string `json:"identifiers"`
	} `json:"agents"`
}

func (a agentsPage) connected() []string {
	var ids []string
	for _, agent := range a.Agents {
		ids = append(ids, agent.AgentID)
	}
	return ids
}

func serverAgents(admin string) (agentsPage, error) {
	var page agentsPage
	resp, err := http.Get("http://" + admin + "/agents")
	if err != nil {
		return page, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return page, fmt.Errorf("GET /agents: %s", resp.Status)
	}
	return page, json.NewDecoder(resp.Body).Decode(&page)
}

// waitUntil polls cond (with backoff, up to once a second) until it holds;
// it fails the test when the hang guard passes first. cond also says what
// it saw, for the failure message.
func waitUntil(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, time.Second) {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s (hang guard) for %s; last saw: %s", hangGuard, what, saw)
		}
		time.Sleep(delay)
	}
}

// kubectl runs kubectl against the running kube-apiserver.
func (c *cluster) kubectl(t testing.TB, stdin []byte, args ...string) result {
	t.Helper()
	return runCmd(t, bytes.NewReader(stdin), c.bin.kubectl, append(c.kubectlArgs(), args...)...)
}

func (c *cluster) kubectlArgs() []string {
	return []string{"--kubeconfig", c.pki.adminKubeconfig, "--request-timeout", "0"}
}

// mustKubectl runs kubectl and fails the test unless it succeeds.
func (c *cluster) mustKubectl(t testing.TB, stdin []byte, args ...string) string {
	t.Helper()
	r := c.kubectl(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("kubectl %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// useAPIServer makes kube-apiserver run with the egress mode given (starting
// or restarting it), and the Node and Pod exist.
func (c *cluster) useAPIServer(t *testing.T, mode egressMode) {
	t.Helper()
	if c.apiserver != nil && !c.apiserver.exited() && c.apiserverMode.name == mode.name {
		return
	}
	if c.apiserver != nil {
		c.apiserver.stop()
	}
	egress := filepath.Join(workDir, "egress-"+mode.name+".yaml")
	write(egress, []byte(fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection: %s
`, mode.connection(c))))
	p := c.pki
	c.apiserver = startProc(t, "kube-apiserver-"+mode.name, "", nil, c.bin.apiserver,
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", "127.0.0.1", "--secure-port", apiserverPort, "--advertise-address", serverIP,
		"--tls-cert-file", p.apiserverCert, "--tls-private-key-file", p.apiserverKey, "--client-ca-file", p.kubeCA,
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", p.saPub, "--service-account-signing-key-file", p.saKey,
		"--kubelet-client-certificate", p.kubeletClientCert, "--kubelet-client-key", p.kubeletClientKey,
		"--kubelet-certificate-authority", p.kubeCA, "--kubelet-preferred-address-types", "InternalIP",
		"--egress-selector-config-file", egress,
		"--authorization-mode", "Node,RBAC", "--cert-dir", filepath.Join(workDir, "apiserver-certs"))
	c.apiserverMode = mode
	c.waitReady(t)
	if !c.objects {
		c.createObjects(t)
		c.objects = true
	}
}

// waitReady polls kube-apiserver's /readyz until it answers 200.
func (c *cluster) waitReady(t *testing.T) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(workDir, "admin.pem"), filepath.Join(workDir, "admin-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	ca, err := os.ReadFile(c.pki.kubeCA)
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots}}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), startGuard)
	defer cancel()
	last := "no answer"
	for delay := 50 * time.Millisecond; ; delay = min(2*delay, time.Second) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://127.0.0.1:"+apiserverPort+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if c.apiserver.exited() {
			t.Fatalf("kube-apiserver exited (%v):\n%s", c.apiserver.exitErr(), c.apiserver.tail(40))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kube-apiserver not ready within %s (last: %s):\n%s", startGuard, last, c.apiserver.tail(40))
		case <-time.After(delay):
		}
	}
}

// logLines is what the pod's container has logged before the tests start.
var logLines = []string{"web: starting on " + nodeName, "web: serving on :8080"}

// createObjects creates the Node (its InternalIP set through nodes/status,
// as a kubelet does), the pod bound to it and the pod's container log.
func (c *cluster) createObjects(t *testing.T) {
	t.Helper()
	write(containerLog(c.logDir, podNS, podName, container), []byte(strings.Join(logLines, "\n")+"\n"))
	c.mustKubectl(t, []byte(fmt.Sprintf(`apiVersion: v1
kind: Node
metadata:
  name: %[1]s
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: default
  namespace: %[2]s
---
apiVersion: v1
kind: Pod
metadata:
  name: %[3]s
  namespace: %[2]s
spec:
  nodeName: %[1]s
  automountServiceAccountToken: false
  containers:
  - name: %[4]s
    image: registry.invalid/web:1
    ports:
    - containerPort: %[5]d
`, nodeName, podNS, podName, container, podPort)), "apply", "-f", "-")
	c.mustKubectl(t, nil, "patch", "node", nodeName, "--subresource=status", "--type=merge", "-p",
		fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":%q},{"type":"Hostname","address":%q}],"daemonEndpoints":{"kubeletEndpoint":{"Port":%d}}}}`,
			nodeIP, nodeName, kubePort))
	// kubectl port-forward wants a running pod.
	c.mustKubectl(t, nil, "patch", "pod", podName, "-n", podNS, "--subresource=status", "--type=merge", "-p",
		`{"status":{"phase":"Running"}}`)
}

// appendLog adds a line to the container's log.
func (c *cluster) appendLog(t *testing.T, line string) {
	t.Helper()
	f, err := os.OpenFile(containerLog(c.logDir, podNS, podName, container), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, line); err != nil {
		t.Fatal(err)
	}
}

// TestTheNodeIsReachableOnlyThroughTheAgent is the premise of every other
// test: from the control plane's namespace, where kube-apiserver runs, there
// is no route to the kubelet.
func TestTheNodeIsReachableOnlyThroughTheAgent(t *testing.T) {
	env(t)
	err := dialDirect()
	if err == nil {
		t.Fatalf("the kubelet (%s:%d) is reachable from the control plane's namespace without the tunnel", nodeIP, kubePort)
	}
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("dialling the kubelet directly: %v; want 'network is unreachable'", err)
	}
}

// dialDirect tries to reach the kubelet from the control plane's namespace
// without the tunnel.
func dialDirect() error {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(nodeIP, fmt.Sprint(kubePort)), hangGuard)
	if err == nil {
		conn.Close()
	}
	return err
}
