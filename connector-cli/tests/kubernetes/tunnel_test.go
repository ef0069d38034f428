package kubernetes

// What a user checks after putting connector between kube-apiserver and its
// nodes: kubectl logs, logs -f, exec, port-forward and the node proxy reach a
// kubelet that only the agent can reach, in both egress modes kube-apiserver
// offers over a Unix socket, and a stopped agent makes them fail at once with
// a clear error instead of hanging.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestKubectlThroughConnector(t *testing.T) {
	for _, mode := range []egressMode{httpConnectUDS, grpcUDS, httpConnectTLS} {
		t.Run(mode.name, func(t *testing.T) {
			c := env(t)
			c.useAPIServer(t, mode)
			mark := c.server.mark()
			t.Run("logs", func(t *testing.T) { checkLogs(t, c) })
			t.Run("logs-follow", func(t *testing.T) { checkLogsFollow(t, c) })
			t.Run("exec-stdin-round-trip", func(t *testing.T) { checkExecRoundTrip(t, c) })
			t.Run("exec-exit-code", func(t *testing.T) { checkExecExitCode(t, c) })
			t.Run("port-forward", func(t *testing.T) { checkPortForward(t, c) })
			t.Run("node-proxy-healthz", func(t *testing.T) { checkNodeProxy(t, c) })
			if mode.name == grpcUDS.name {
				t.Run("closed-tunnels-are-not-failures", func(t *testing.T) { checkNoFailedStreams(t, c, mark) })
			}
			t.Run("stopped-agent-fails-fast", func(t *testing.T) { checkStoppedAgent(t, c) })
		})
	}
}

func checkLogs(t *testing.T, c *cluster) {
	got := c.mustKubectl(t, nil, "logs", "-n", podNS, podName)
	if !strings.HasPrefix(got, strings.Join(logLines, "\n")+"\n") {
		t.Fatalf("kubectl logs: got %q, want the container's log starting with %q", got, logLines)
	}
}

// checkLogsFollow: a line the container logs while `kubectl logs -f` runs
// reaches it.
func checkLogsFollow(t *testing.T, c *cluster) {
	cmd := exec.Command(c.bin.kubectl, append(c.kubectlArgs(), "logs", "-f", "-n", podNS, podName)...)
	cmd.Env = childEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
	}()
	defer func() {
		_ = cmd.Process.Kill()
		for range lines {
		}
		_ = cmd.Wait()
	}()
	expect := func(want string) {
		t.Helper()
		guard := time.After(hangGuard)
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("kubectl logs -f ended before %q: %s", want, stderr.String())
				}
				if line == want {
					return
				}
			case <-guard:
				t.Fatalf("kubectl logs -f: no line %q within %s (hang guard)", want, hangGuard)
			}
		}
	}
	expect(logLines[0])
	fresh := "web: request " + nonce()
	c.appendLog(t, fresh)
	expect(fresh)
}

// checkExecRoundTrip: a megabyte sent to `cat` on the node's stdin comes
// back unchanged on its stdout.
func checkExecRoundTrip(t *testing.T, c *cluster) {
	input := bytes.Repeat([]byte(nonce()+" the quick brown fox\n"), 1<<20/48)
	r := c.kubectl(t, input, "exec", "-i", "-n", podNS, podName, "--", "cat")
	if r.code != 0 {
		t.Fatalf("kubectl exec -i cat: %s", r.String()[:min(len(r.String()), 2000)])
	}
	if r.stdout != string(input) {
		t.Fatalf("kubectl exec -i cat: got %d bytes back, sent %d (equal: false)", len(r.stdout), len(input))
	}
}

// checkExecExitCode: kubectl exec reports the command's exit code and its
// output, which depends on what it read from stdin.
func checkExecExitCode(t *testing.T, c *cluster) {
	word := nonce()
	r := c.kubectl(t, []byte(word+"\n"), "exec", "-i", "-n", podNS, podName, "--",
		"sh", "-c", `read line; echo "read $line"; echo oops >&2; exit 7`)
	if r.code != 7 {
		t.Fatalf("kubectl exec: exit code %d, want 7 (the command's)\n%s", r.code, r)
	}
	if want := "read " + word + "\n"; r.stdout != want {
		t.Fatalf("kubectl exec: stdout %q, want %q", r.stdout, want)
	}
	if !strings.Contains(r.stderr, "oops") {
		t.Fatalf("kubectl exec: stderr %q, want the command's %q", r.stderr, "oops")
	}
}

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> ` + fmt.Sprint(podPort))

// checkPortForward: HTTP requests to kubectl port-forward's local port reach
// the pod's port on the node.
func checkPortForward(t *testing.T, c *cluster) {
	pf := startProc(t, "kubectl-port-forward", "", nil, c.bin.kubectl,
		append(c.kubectlArgs(), "port-forward", "-n", podNS, "pod/"+podName, fmt.Sprintf(":%d", podPort))...)
	defer pf.stop()
	port := forwarding.FindStringSubmatch(pf.waitFor(t, "Forwarding from 127.0.0.1:"))[1]
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: hangGuard}
	for i := range 3 {
		path := fmt.Sprintf("/request-%d-%s", i, nonce())
		resp, err := client.Get("http://127.0.0.1:" + port + path)
		if err != nil {
			t.Fatalf("GET through kubectl port-forward: %v\n%s", err, pf.tail(20))
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := podGreeting + ": " + path + "\n"; string(body) != want {
			t.Fatalf("GET through kubectl port-forward: %s %q, want %q", resp.Status, body, want)
		}
	}
}

// checkNodeProxy: the node proxy subresource reaches the kubelet's /healthz.
func checkNodeProxy(t *testing.T, c *cluster) {
	mark := c.kubelet.mark()
	got := c.mustKubectl(t, nil, "get", "--raw", "/api/v1/nodes/"+nodeName+"/proxy/healthz")
	if got != "ok" {
		t.Fatalf("kubectl get --raw .../proxy/healthz: %q, want the kubelet's %q", got, "ok")
	}
	c.kubelet.waitFrom(t, mark, hangGuard, "GET /healthz from", "kube-apiserver-kubelet-client")
}

// checkNoFailedStreams: kube-apiserver closed every tunnel of the checks
// above normally (konnectivity-client closes its gRPC connection after
// CLOSE_RSP); connector server's log reports none as a failed stream.
func checkNoFailedStreams(t *testing.T, c *cluster, mark int) {
	c.server.mu.Lock()
	lines := slices.Clone(c.server.lines[mark:])
	c.server.mu.Unlock()
	streams := 0
	for _, line := range lines {
		if strings.Contains(line, "client stream failed") {
			t.Errorf("connector server logged a normal close as a failure: %s", line)
		}
		if strings.Contains(line, "client stream ended") {
			streams++
		}
	}
	if streams == 0 {
		t.Fatal("connector server logged no ended client stream: were the tunnels gRPC streams?")
	}
}

// checkStoppedAgent: with the agent stopped, kubectl logs fails with an
// error that says the node cannot be reached (within the hang guard, not
// after a dial timeout), and works again once the agent is back.
func checkStoppedAgent(t *testing.T, c *cluster) {
	c.stopAgent(t)
	r := c.kubectl(t, nil, "logs", "-n", podNS, podName)
	restarted := c.startAgent()
	if r.code == 0 {
		t.Fatalf("kubectl logs succeeded with the agent stopped: %q", r.stdout)
	}
	t.Logf("kubectl logs with the agent stopped: %s", strings.TrimSpace(r.stderr))
	for _, want := range []string{nodeIP, "no connected agent matches host"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("kubectl logs with the agent stopped: stderr %q does not say %q", r.stderr, want)
		}
	}
	if restarted != nil {
		t.Fatalf("restarting the agent: %v", restarted)
	}
	checkLogs(t, c)
}

func nonce() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
