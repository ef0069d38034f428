package kubernetes

// connector's Kubernetes-native features against the real kube-apiserver:
// agents admitted with a projected ServiceAccount token and bound to the
// node of the pod the token is bound to, and the server count from Leases.

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const (
	agentNS        = "kube-system"
	agentSA        = "connector-agent"
	agentAudience  = "connector"
	otherNode      = "node-2"
	otherNodeIP    = "10.252.0.20" // node-2's InternalIP: the agent on node-1 may not claim it
	leaseNamespace = "kube-system"
	leaseLabel     = "k8s-app=connector-e2e"
)

// extraServer is a `connector server` besides the shared one.
type extraServer struct {
	*proc
	quic, admin, connectUDS string
}

// startServer starts `connector server` with id id on the agents' network,
// an HTTP CONNECT Unix socket and an admin listener, plus args.
func (c *cluster) startServer(t *testing.T, id string, args ...string) *extraServer {
	t.Helper()
	s := &extraServer{connectUDS: filepath.Join(workDir, id+".sock")}
	s.proc = startProc(t, "connector-server-"+id, "", []string{"CONNECTOR_LOG=info"}, c.bin.connector,
		append([]string{"server", "--listen", serverIP + ":0", "--server-id", id,
			"--cert", c.pki.connectorServerCert, "--key", c.pki.connectorServerKey,
			"--connect-uds", s.connectUDS, "--admin", "127.0.0.1:0"}, args...)...)
	t.Cleanup(s.stop)
	s.quic = fieldValue(s.waitFrom(t, 0, startGuard, "accepting agents"), "listen")
	s.admin = fieldValue(s.waitFrom(t, 0, startGuard, "admin endpoints listening"), "listen")
	return s
}

// startNodeAgent starts `connector agent` in the node's namespace against
// server, with its token in tokenFile, claiming identifiers as agentID. Its
// admin endpoints listen on the node's end of the veth, which the tests reach.
func (c *cluster) startNodeAgent(t *testing.T, name, server, tokenFile, agentID, identifiers string) (*proc, string) {
	t.Helper()
	agent := startProc(t, name, c.nodeNS, []string{"CONNECTOR_LOG=info"}, c.bin.connector,
		"agent", "--server", server, "--ca", c.pki.connectorCA, "--agent-id", agentID,
		"--token-file", tokenFile, "--identifiers", identifiers, "--allow", nodeIP+"/32",
		"--drain-grace", "1s", "--admin", agentIP+":0")
	t.Cleanup(agent.stop)
	admin := fieldValue(agent.waitFrom(t, 0, startGuard, "admin endpoints listening"), "listen")
	return agent, admin
}

// metric is the value of an unlabelled metric on an admin listener's /metrics.
func metric(admin, name string) (int, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) == 2 && fields[0] == name {
			return strconv.Atoi(fields[1])
		}
	}
	return 0, fmt.Errorf("no %s on http://%s/metrics", name, admin)
}

// waitMetric waits until admin's metric name equals want.
func waitMetric(t *testing.T, what, admin, name string, want int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%s: %s = %d", what, name, want), func() (bool, string) {
		got, err := metric(admin, name)
		if err != nil {
			return false, err.Error()
		}
		return got == want, strconv.Itoa(got)
	})
}

// useAnyAPIServer keeps kube-apiserver in whatever egress mode it runs, or
// starts it.
func (c *cluster) useAnyAPIServer(t *testing.T) {
	t.Helper()
	if c.apiserver == nil || c.apiserver.exited() {
		c.useAPIServer(t, httpConnectUDS)
	}
}

// TestServiceAccountTokenAgent: an agent whose credential is a real
// projected ServiceAccount token, bound to a pod on node-1 (`kubectl create
// token --bound-object-kind Pod`), is admitted by a server that reviews
// tokens with the apiserver, and may serve node-1 only: kube-apiserver
// reaches node-1's kubelet through it; claiming node-2 (its name or its
// address) is refused, and so is node-2's agent claiming node-1 or taking
// node-1's agent's id (which would replace that agent).
func TestServiceAccountTokenAgent(t *testing.T) {
	c := env(t)
	c.useAnyAPIServer(t)
	c.mustKubectl(t, []byte(fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: %[1]s, namespace: %[2]s}
---
apiVersion: v1
kind: Node
metadata: {name: %[3]s}
---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s-%[4]s, namespace: %[2]s}
spec:
  nodeName: %[4]s
  serviceAccountName: %[1]s
  automountServiceAccountToken: false
  containers: [{name: agent, image: registry.invalid/connector:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s-%[3]s, namespace: %[2]s}
spec:
  nodeName: %[3]s
  serviceAccountName: %[1]s
  automountServiceAccountToken: false
  containers: [{name: agent, image: registry.invalid/connector:1}]
`, agentSA, agentNS, otherNode, nodeName)), "apply", "-f", "-")
	c.mustKubectl(t, nil, "patch", "node", otherNode, "--subresource=status", "--type=merge", "-p",
		fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":%q}]}}`, otherNodeIP))
	// What the kubelet projects into a DaemonSet agent's pod on each node.
	token := func(node string) string {
		tok := strings.TrimSpace(c.mustKubectl(t, nil, "create", "token", agentSA, "-n", agentNS,
			"--bound-object-kind", "Pod", "--bound-object-name", agentSA+"-"+node, "--audience", agentAudience))
		path := filepath.Join(workDir, "sa-token-"+node)
		write(path, []byte(tok))
		return path
	}
	node1Token, node2Token := token(nodeName), token(otherNode)

	server := c.startServer(t, "cp-sa", "--kube-service-accounts", agentNS+"/"+agentSA,
		"--kube-audiences", agentAudience, "--kubeconfig", c.pki.adminKubeconfig)

	t.Run("admitted-and-bound-to-its-node", func(t *testing.T) {
		agent, _ := c.startNodeAgent(t, "connector-agent-sa", server.quic, node1Token, nodeName, agentIdentifiers)
		identity := "system:serviceaccount:" + agentNS + ":" + agentSA + "@" + nodeName
		server.waitFor(t, "agent connected", "agent="+nodeName, "identity="+identity, "identifiers="+agentIdentifiers)
		agent.waitFor(t, "connected", "server_id=cp-sa")
		page, err := serverAgents(server.admin)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Agents) != 1 || page.Agents[0].Identity != identity || page.Agents[0].Identifiers != agentIdentifiers {
			t.Fatalf("/agents: %+v, want one agent %s serving %s", page.Agents, identity, agentIdentifiers)
		}
		// The agent serves node-1: the real kube-apiserver reaches its kubelet through it.
		c.useAPIServer(t, egressMode{name: "HTTPConnect-UDS-ServiceAccount", connection: func(*cluster) string {
			return fmt.Sprintf(`{proxyProtocol: HTTPConnect, transport: {uds: {udsName: %q}}}`, server.connectUDS)
		}})
		checkLogs(t, c)
		checkNodeProxy(t, c)
	})

	// Each refused agent: the server says why, the agent hears it, and it is
	// not among the server's agents.
	refused := []struct {
		name, token, agentID, identifiers, reason string
	}{
		{"claims-another-node", node1Token, nodeName, "host=" + otherNode, "identifiers"},
		{"claims-another-nodes-address", node1Token, nodeName, "host=" + nodeName + ",ipv4=" + otherNodeIP, "identifiers"},
		{"another-nodes-agent-claims-this-node", node2Token, otherNode, agentIdentifiers, "identifiers"},
		{"another-nodes-agent-takes-this-nodes-agent-id", node2Token, nodeName, "host=" + otherNode, "agent id"},
	}
	for _, r := range refused {
		t.Run("refused-"+r.name, func(t *testing.T) {
			mark := server.mark()
			agent, _ := c.startNodeAgent(t, "connector-agent-"+r.name, server.quic, r.token, r.agentID, r.identifiers)
			line := server.waitFrom(t, mark, hangGuard, "agent claims", r.reason, "does not")
			t.Logf("connector server: %s", line[strings.Index(line, "agent claims"):])
			agent.waitFor(t, "the server rejected this agent")
			agent.stop()
			page, err := serverAgents(server.admin)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range page.Agents {
				if a.Identifiers != agentIdentifiers {
					t.Fatalf("/agents lists %+v, which claimed %s", a, r.identifiers)
				}
			}
		})
	}
}

// TestServerCountFromLeases: two servers that hold Leases with one label
// count each other (2), an agent is told 2 in its Welcome, and when one
// server stops renewing (killed) the other counts 1 after the lease
// duration, which is what a newly connecting agent is told.
func TestServerCountFromLeases(t *testing.T) {
	c := env(t)
	c.useAnyAPIServer(t)
	leases := []string{"--lease-namespace", leaseNamespace, "--lease-label", leaseLabel,
		"--lease-duration", "3s", "--lease-renew-interval", "500ms", "--kubeconfig", c.pki.adminKubeconfig,
		"--tokens", c.tokens}
	a := c.startServer(t, "lease-a", leases...)
	b := c.startServer(t, "lease-b", leases...)
	waitMetric(t, "lease-a counts both", a.admin, "connector_server_replicas", 2)
	waitMetric(t, "lease-b counts both", b.admin, "connector_server_replicas", 2)
	names := strings.Fields(c.mustKubectl(t, nil, "get", "leases", "-n", leaseNamespace, "-l", leaseLabel,
		"-o", "jsonpath={.items[*].metadata.name}"))
	slices.Sort(names)
	if want := []string{"connector-lease-a", "connector-lease-b"}; !slices.Equal(names, want) {
		t.Fatalf("kubectl get leases -l %s: %q, want %q", leaseLabel, names, want)
	}

	first, firstAdmin := c.startNodeAgent(t, "connector-agent-lease-2", a.quic, c.tokenFile, nodeName, agentIdentifiers)
	waitMetric(t, "an agent connected while both run", firstAdmin, "connector_agent_servers_expected", 2)

	// lease-b stops renewing (no clean shutdown, which would delete its Lease).
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.done
	waitMetric(t, "lease-a after lease-b stopped", a.admin, "connector_server_replicas", 1)
	// Not asserted: agents keep the largest count they were told.
	expected, err := metric(firstAdmin, "connector_agent_servers_expected")
	t.Logf("the agent connected while both ran now expects %d replicas (%v)", expected, err)
	first.stop()
	_, admin := c.startNodeAgent(t, "connector-agent-lease-1", a.quic, c.tokenFile, nodeName, agentIdentifiers)
	waitMetric(t, "an agent connected after lease-b stopped", admin, "connector_agent_servers_expected", 1)
}

// cargoTestEnv opts in to TestConnectorCoreAgainstThisAPIServer.
const cargoTestEnv = "E2E_CARGO_TEST"

// TestConnectorCoreAgainstThisAPIServer runs connector-core's own tests that
// need a real kube-apiserver (connector-core/tests/kube_apiserver.rs: the
// ServiceAccount-token authenticator and the Lease controller as a library,
// and a reconnect storm of 1,000 agents; they skip without one) against this
// suite's, when E2E_CARGO_TEST is set (make test-kubernetes sets it, after
// `cargo test --workspace` built them).
func TestConnectorCoreAgainstThisAPIServer(t *testing.T) {
	if os.Getenv(cargoTestEnv) == "" {
		t.Skipf("set %s=1 to run connector-core/tests/kube_apiserver.rs against this suite's kube-apiserver", cargoTestEnv)
	}
	c := env(t)
	c.useAnyAPIServer(t)
	cmd := exec.Command("cargo", "test", "--workspace", "--test", "kube_apiserver", "--", "--nocapture")
	cmd.Dir = filepath.Join("..", "..", "..")
	cmd.Env = append(childEnv(), "CONNECTOR_TEST_KUBE_APISERVER="+c.pki.adminKubeconfig)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	t.Logf("cargo test --workspace --test kube_apiserver:\n%s", out)
	if err != nil {
		t.Fatalf("connector-core's tests against this kube-apiserver: %v", err)
	}
	if strings.Contains(string(out), "skipped") || !strings.Contains(string(out), "test result: ok.") {
		t.Fatal("connector-core's tests against this kube-apiserver did not run")
	}
}
