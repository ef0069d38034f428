package kubernetes

// The kubelet stand-in: the part of a kubelet that kube-apiserver talks to
// for `kubectl logs`, `exec`, `port-forward` and the node proxy. It serves
// HTTPS on the node's address and admits only clients with a certificate from
// the cluster CA (kube-apiserver's --kubelet-client-certificate). Exec and
// port-forward go through the kubelet's own streaming library,
// k8s.io/cri-streaming, so kube-apiserver speaks to it exactly as to a kubelet
// (SPDY, or WebSocket when it passes WebSockets through). Its "containers"
// are processes in the node's namespace, and a pod's port is a port on the
// node's loopback.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

const (
	kubeletCAEnv   = "E2E_KUBELET_CA"
	kubeletCertEnv = "E2E_KUBELET_CERT"
	kubeletKeyEnv  = "E2E_KUBELET_KEY"
	kubeletLogsEnv = "E2E_KUBELET_LOGS"
	// kubeletReady is the line the stand-in prints once it serves.
	kubeletReady = "kubelet stand-in serving"
	// podGreeting is what the pod's port answers (port-forward's target).
	podGreeting = "hello from pod " + podNS + "/" + podName + " on " + nodeName
)

// containerLog is where the stand-in reads a container's log, as a kubelet
// reads the runtime's log files; the tests append lines to it.
func containerLog(dir, namespace, pod, container string) string {
	return filepath.Join(dir, namespace+"_"+pod+"_"+container+".log")
}

func runKubelet() int {
	if err := serveKubelet(); err != nil {
		fmt.Fprintln(os.Stderr, "kubelet stand-in:", err)
		return 1
	}
	return 0
}

func serveKubelet() error {
	caPEM, err := os.ReadFile(os.Getenv(kubeletCAEnv))
	if err != nil {
		return err
	}
	clients := x509.NewCertPool()
	if !clients.AppendCertsFromPEM(caPEM) {
		return errors.New("no CA certificate in " + os.Getenv(kubeletCAEnv))
	}
	cert, err := tls.LoadX509KeyPair(os.Getenv(kubeletCertEnv), os.Getenv(kubeletKeyEnv))
	if err != nil {
		return err
	}
	k := &kubelet{logs: os.Getenv(kubeletLogsEnv)}

	pod, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(podPort)))
	if err != nil {
		return err
	}
	go func() {
		_ = http.Serve(pod, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s: %s\n", podGreeting, r.URL.Path)
		}))
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.containerLogs)
	for _, method := range []string{"GET", "POST"} {
		mux.HandleFunc(method+" /exec/{namespace}/{pod}/{container}", k.exec)
		mux.HandleFunc(method+" /exec/{namespace}/{pod}/{uid}/{container}", k.exec)
		mux.HandleFunc(method+" /portForward/{namespace}/{pod}", k.portForward)
		mux.HandleFunc(method+" /portForward/{namespace}/{pod}/{uid}", k.portForward)
	}
	server := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(os.Stderr, "kubelet stand-in: %s %s from %s (%s)\n", r.Method, r.URL.RequestURI(), r.RemoteAddr,
				r.TLS.PeerCertificates[0].Subject.CommonName)
			mux.ServeHTTP(w, r)
		}),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    clients,
			MinVersion:   tls.VersionTLS12,
		},
	}
	listener, err := net.Listen("tcp", net.JoinHostPort(nodeIP, strconv.Itoa(kubePort)))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%s on https://%s, the pod's port on 127.0.0.1:%d\n", kubeletReady, listener.Addr(), podPort)
	return server.ServeTLS(listener, "", "")
}

type kubelet struct {
	logs string
}

// containerLogs serves a container's log file; with follow=true it keeps
// sending what is appended until the client goes away, as a kubelet does.
func (k *kubelet) containerLogs(w http.ResponseWriter, r *http.Request) {
	file, err := os.Open(containerLog(k.logs, r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")))
	if err != nil {
		http.Error(w, "container not found: "+err.Error(), http.StatusNotFound)
		return
	}
	defer file.Close()
	w.Header().Set("Content-Type", "text/plain")
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	flusher := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := file.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			flusher.Flush()
			continue
		}
		if err != io.EOF || !follow {
			return
		}
		// tail -f: look for appended lines until the client leaves.
		select {
		case <-r.Context().Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (k *kubelet) exec(w http.ResponseWriter, r *http.Request) {
	options, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	command := r.URL.Query()["command"]
	if len(command) == 0 {
		http.Error(w, "no command", http.StatusBadRequest)
		return
	}
	remotecommand.ServeExec(w, r, processes{}, r.PathValue("pod"), r.PathValue("uid"), r.PathValue("container"),
		command, options, 4*time.Hour, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *kubelet) portForward(w http.ResponseWriter, r *http.Request) {
	options, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, processes{}, r.PathValue("pod"), r.PathValue("uid"), options,
		4*time.Hour, remotecommand.DefaultStreamCreationTimeout, portforward.SupportedProtocols)
}

// processes runs a container's commands as processes of the node, and
// forwards a pod's ports to the node's loopback.
type processes struct{}

func (processes) ExecInContainer(ctx context.Context, _, _, _ string, command []string, in io.Reader, out, errOut io.WriteCloser,
	_ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.Stdout, cmd.Stderr = out, errOut
	if in != nil {
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		// Not waited for: the client may keep its stdin open after the command ends.
		go func() {
			_, _ = io.Copy(stdin, in)
			stdin.Close()
		}()
	}
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return utilexec.CodeExitError{Err: err, Code: exit.ExitCode()}
	}
	return err
}

func (processes) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port %d of the pod: %w", port, err)
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, stream)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(stream, conn)
	return nil
}
