package kubeapiserver

// kube-apiserver's egress selector in `proxyProtocol: HTTPConnect` mode, as
// described in k8s.io/apiserver/pkg/server/egressselector (tunnelHTTPConnect):
// it connects to the proxy over a Unix socket or TCP with client certificates,
// writes `CONNECT addr HTTP/1.1` with `Host: 127.0.0.1`, reads the answer with
// http.ReadResponse, requires 200 and rejects any byte buffered after the
// response head, then speaks to the target (often TLS first) on that connection.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// egressDialer dials like kube-apiserver's HTTPConnect egress selector.
type egressDialer struct {
	// proxy opens the connection to the CONNECT proxy.
	proxy func(ctx context.Context) (net.Conn, error)
	name  string
}

func udsEgress(path string) egressDialer {
	return egressDialer{name: "uds", proxy: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
}

func tlsEgress(addr string, config *tls.Config) egressDialer {
	return egressDialer{name: "tcp+mtls", proxy: func(ctx context.Context) (net.Conn, error) {
		d := tls.Dialer{Config: config}
		return d.DialContext(ctx, "tcp", addr)
	}}
}

// connectError is a refused CONNECT: the status line and body the proxy sent.
type connectError struct {
	status int
	reason string
}

func (e *connectError) Error() string {
	return fmt.Sprintf("CONNECT refused: %d %s", e.status, e.reason)
}

func (e egressDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := e.proxy(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to the proxy: %w", err)
	}
	if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, "127.0.0.1"); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading the CONNECT response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body := make([]byte, 512)
		n, _ := resp.Body.Read(body)
		conn.Close()
		return nil, &connectError{status: resp.StatusCode, reason: strings.TrimSpace(string(body[:n]))}
	}
	if br.Buffered() > 0 {
		conn.Close()
		return nil, fmt.Errorf("unexpected %d bytes of buffered data after the CONNECT response", br.Buffered())
	}
	return conn, nil
}

func (tn *tunnel) egressDialers() []egressDialer {
	return []egressDialer{udsEgress(tn.connectUDS), tlsEgress(tn.connectTLS, tn.clientTLS)}
}

// HTTPS (TLS first, like kubelet) and plain HTTP (like a webhook) through
// each HTTPConnect transport, to servers reached through the agent.
func TestHTTPConnectCarriesHTTPSAndHTTP(t *testing.T) {
	https, plain := httpTargets(t)
	for _, egress := range shared.egressDialers() {
		t.Run(egress.name, func(t *testing.T) {
			tlsConfig := https.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
			client := &http.Client{Transport: &http.Transport{
				DialContext:     egress.DialContext,
				TLSClientConfig: tlsConfig,
			}}
			defer client.CloseIdleConnections()
			if got, want := get(t, client, https.URL+"/containerLogs/ns/pod/c"), "kubelet-tls GET /containerLogs/ns/pod/c"; got != want {
				t.Errorf("HTTPS through the tunnel: got %q, want %q", got, want)
			}
			if got, want := get(t, client, plain.URL+"/validate"), "webhook-plain GET /validate"; got != want {
				t.Errorf("HTTP through the tunnel: got %q, want %q", got, want)
			}
		})
	}
}

// Many requests at once, each on its own tunnelled connection.
func TestHTTPConnectConcurrentDials(t *testing.T) {
	_, plain := httpTargets(t)
	for _, egress := range shared.egressDialers() {
		t.Run(egress.name, func(t *testing.T) {
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for i := 0; i < 64; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					client := &http.Client{Transport: &http.Transport{DialContext: egress.DialContext, DisableKeepAlives: true}}
					resp, err := client.Get(fmt.Sprintf("%s/req/%d", plain.URL, i))
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					buf := new(strings.Builder)
					if _, err := bufio.NewReader(resp.Body).WriteTo(buf); err != nil {
						errs <- err
						return
					}
					if want := fmt.Sprintf("webhook-plain GET /req/%d", i); buf.String() != want {
						errs <- fmt.Errorf("request %d: got %q, want %q", i, buf.String(), want)
					}
				}(i)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// Failures reach the egress dialer as statuses with a readable reason.
func TestHTTPConnectFailuresAreStatuses(t *testing.T) {
	cases := []struct {
		name, addr string
		status     int
		reason     string
	}{
		{"no agent serves the host", "node-z.example:10250", http.StatusServiceUnavailable, "node-z.example"},
		{"closed port behind the agent", closedPort(t), http.StatusBadGateway, "refused"},
		{"denied by the agent's policy", "127.0.0.2:10250", http.StatusForbidden, "polic"},
	}
	for _, egress := range shared.egressDialers() {
		for _, c := range cases {
			t.Run(egress.name+"/"+c.name, func(t *testing.T) {
				conn, err := egress.DialContext(context.Background(), "tcp", c.addr)
				if err == nil {
					conn.Close()
					t.Fatalf("dial %s succeeded", c.addr)
				}
				ce, ok := err.(*connectError)
				if !ok {
					t.Fatalf("dial %s: want a CONNECT status, got %v", c.addr, err)
				}
				if ce.status != c.status || !strings.Contains(ce.reason, c.reason) {
					t.Errorf("dial %s: got %d %q, want %d with %q", c.addr, ce.status, ce.reason, c.status, c.reason)
				}
			})
		}
	}
}

// The mTLS frontend admits only clients with a certificate from its CA.
func TestHTTPConnectTLSRequiresClientCertificate(t *testing.T) {
	config := shared.clientTLS.Clone()
	config.Certificates = nil
	conn, err := tls.Dial("tcp", shared.connectTLS, config)
	if err == nil {
		// TLS 1.3 reports the missing certificate on the first read.
		_, _ = fmt.Fprintf(conn, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		_, err = bufio.NewReader(conn).ReadByte()
		conn.Close()
	}
	if err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
}
