// Package kubernetes is connector's end-to-end suite with real Kubernetes
// components: kube-apiserver, etcd and kubectl built from the Go module proxy
// (build.sh, versions.env), `connector server` and `connector agent`, and a
// kubelet stand-in that serves logs, exec and port-forward with the kubelet's
// own streaming library (k8s.io/cri-streaming).
//
// The test binary plays three roles, chosen by an environment variable:
//
//   - outside (as `go test` starts it): creates two network namespaces, the
//     control plane's and the node's, runs itself again inside the control
//     plane's, and deletes both namespaces when that run ends, however it ends;
//   - control plane: runs the tests; etcd, kube-apiserver, `connector server`
//     and kubectl run here, and nothing here has a route to the node's address;
//   - kubelet: the kubelet stand-in, started in the node's namespace beside
//     `connector agent`, the only one that can reach it.
package kubernetes

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"syscall"
	"testing"
)

const (
	roleEnv   = "E2E_ROLE"
	cpNSEnv   = "E2E_CP_NETNS"
	nodeNSEnv = "E2E_NODE_NETNS"
)

// The network: a veth pair joins the two namespaces on linkNet; the node's
// address (the kubelet's, its InternalIP) is on the node's loopback and is
// routed nowhere, so only processes in the node's namespace reach it.
const (
	serverIP  = "10.251.0.1" // the control plane's end of the veth: connector server's QUIC listener
	agentIP   = "10.251.0.2" // the node's end
	linkMask  = "/30"
	nodeIP    = "10.252.0.10" // the kubelet's address, the Node's InternalIP
	nodeName  = "node-1"
	kubePort  = 10250
	podPort   = 8080 // the port a pod serves on its own loopback (port-forward's target)
	nsPrefix  = "connector-e2e-"
	podName   = "web"
	podNS     = "default"
	container = "app"
)

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "kubelet":
		os.Exit(runKubelet())
	case "control-plane":
		os.Exit(runControlPlane(m))
	default:
		os.Exit(runOutside())
	}
}

// runOutside sets up the namespaces, runs the tests inside the control
// plane's and always removes both.
func runOutside() int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the Kubernetes end-to-end suite creates network namespaces (ip netns): run it as root")
		return 1
	}
	removeStaleNamespaces()
	pid := strconv.Itoa(os.Getpid())
	cp, node := nsPrefix+pid+"-cp", nsPrefix+pid+"-node"
	defer func() {
		for _, ns := range []string{cp, node} {
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "deleting network namespace %s: %v: %s\n", ns, err, out)
			}
		}
	}()
	if err := createTopology(cp, node); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", cp, self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), roleEnv+"=control-plane", cpNSEnv+"="+cp, nodeNSEnv+"="+node)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Interrupted: the tests stop their children and end; the namespaces go after.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		for s := range signals {
			_ = cmd.Process.Signal(s)
		}
	}()
	if err := cmd.Wait(); err != nil {
		if exit, ok := err.(*exec.ExitError); ok && exit.ExitCode() > 0 {
			return exit.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "the tests in the control plane's namespace:", err)
		return 1
	}
	return 0
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%q: %v: %s", args, err, out)
	}
	return nil
}

func createTopology(cp, node string) error {
	for _, args := range [][]string{
		{"ip", "netns", "add", cp},
		{"ip", "netns", "add", node},
		{"ip", "-n", cp, "link", "set", "lo", "up"},
		{"ip", "-n", node, "link", "set", "lo", "up"},
		// Created inside the namespaces, so the names never meet another run's.
		{"ip", "link", "add", "veth0", "netns", cp, "type", "veth", "peer", "name", "veth0", "netns", node},
		{"ip", "-n", cp, "addr", "add", serverIP + linkMask, "dev", "veth0"},
		{"ip", "-n", node, "addr", "add", agentIP + linkMask, "dev", "veth0"},
		{"ip", "-n", cp, "link", "set", "veth0", "up"},
		{"ip", "-n", node, "link", "set", "veth0", "up"},
		{"ip", "-n", node, "addr", "add", nodeIP + "/32", "dev", "lo"},
	} {
		if err := run(args...); err != nil {
			return fmt.Errorf("creating the network namespaces: %w", err)
		}
	}
	return nil
}

// removeStaleNamespaces deletes the namespaces of earlier runs whose test
// process is gone (killed before it could clean up).
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	pattern := regexp.MustCompile(`(?m)^(` + regexp.QuoteMeta(nsPrefix) + `(\d+)-(?:cp|node))\b`)
	for _, match := range pattern.FindAllStringSubmatch(string(out), -1) {
		if _, err := os.Stat("/proc/" + match[2]); os.IsNotExist(err) {
			_ = run("ip", "netns", "delete", match[1])
		}
	}
}
