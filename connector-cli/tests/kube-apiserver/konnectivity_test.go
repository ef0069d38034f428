package kubeapiserver

// kube-apiserver's egress selector in `proxyProtocol: GRPC` mode uses the real
// konnectivity-client module (sigs.k8s.io/apiserver-network-proxy/konnectivity-client):
// one single-use tunnel (one ProxyService.Proxy stream) per dial, over a Unix
// socket. Newer clients can share one gRPC connection (CreateGRPCTunnel). Both
// must work unchanged against `connector server --grpc-uds/--grpc-tls`.

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client/metrics"
)

// grpcTransport is how kube-apiserver reaches the gRPC frontend.
type grpcTransport struct {
	name    string
	address string
	options []grpc.DialOption
}

func (tn *tunnel) grpcTransports() []grpcTransport {
	uds := tn.grpcUDS
	return []grpcTransport{
		{
			name:    "uds",
			address: uds,
			options: []grpc.DialOption{
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", uds)
				}),
				grpc.WithTransportCredentials(insecure.NewCredentials()),
			},
		},
		{
			name:    "tcp+mtls",
			address: tn.grpcTLS,
			options: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tn.clientTLS.Clone()))},
		},
	}
}

// singleUseDial dials like kube-apiserver: a fresh tunnel per connection.
func (g grpcTransport) singleUseDial(ctx context.Context, network, addr string) (net.Conn, error) {
	options := append([]grpc.DialOption{grpc.WithBlock(), grpc.WithReturnConnectionError()}, g.options...)
	createCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tunnel, err := client.CreateSingleUseGrpcTunnelWithContext(createCtx, context.Background(), g.address, options...)
	if err != nil {
		return nil, fmt.Errorf("creating the tunnel: %w", err)
	}
	return tunnel.DialContext(ctx, network, addr)
}

func TestKonnectivityClientCarriesHTTPSAndHTTP(t *testing.T) {
	https, plain := httpTargets(t)
	for _, g := range shared.grpcTransports() {
		t.Run(g.name, func(t *testing.T) {
			tlsConfig := https.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
			client := &http.Client{Transport: &http.Transport{DialContext: g.singleUseDial, TLSClientConfig: tlsConfig}}
			defer client.CloseIdleConnections()
			if got, want := get(t, client, https.URL+"/exec/ns/pod/c"), "kubelet-tls GET /exec/ns/pod/c"; got != want {
				t.Errorf("HTTPS through the gRPC tunnel: got %q, want %q", got, want)
			}
			if got, want := get(t, client, plain.URL+"/mutate"), "webhook-plain GET /mutate"; got != want {
				t.Errorf("HTTP through the gRPC tunnel: got %q, want %q", got, want)
			}
		})
	}
}

// fixedDigestTarget reads n bytes from each connection and answers with their SHA-256.
// (konnectivity-client's Conn cannot half-close, so the length is agreed in advance.)
func fixedDigestTarget(t *testing.T, n int64) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				if _, err := io.CopyN(h, c, n); err == nil {
					_, _ = c.Write(h.Sum(nil))
				}
			}()
		}
	}()
	return l.Addr().String()
}

// Many dials at once, each moving its own data, through single-use tunnels
// (one gRPC connection each) and through one shared reusable tunnel.
func TestKonnectivityClientConcurrentDials(t *testing.T) {
	_, plain := httpTargets(t)
	const dials = 100
	for _, g := range shared.grpcTransports() {
		reusable, err := client.CreateGRPCTunnel(context.Background(), g.address, g.options...)
		if err != nil {
			t.Fatal(err)
		}
		dialers := map[string]func(context.Context, string, string) (net.Conn, error){
			"single-use": g.singleUseDial,
			"reusable":   reusable.DialContext,
		}
		for kind, dial := range dialers {
			t.Run(g.name+"/"+kind, func(t *testing.T) {
				var wg sync.WaitGroup
				errs := make(chan error, dials)
				for i := 0; i < dials; i++ {
					wg.Add(1)
					go func(i int) {
						defer wg.Done()
						c := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
						resp, err := c.Get(fmt.Sprintf("%s/req/%d", plain.URL, i))
						if err != nil {
							errs <- err
							return
						}
						defer resp.Body.Close()
						body, err := io.ReadAll(resp.Body)
						if err != nil {
							errs <- err
							return
						}
						if want := fmt.Sprintf("webhook-plain GET /req/%d", i); string(body) != want {
							errs <- fmt.Errorf("dial %d: got %q, want %q", i, body, want)
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
		if err := reusable.Close(); err != nil {
			t.Errorf("closing the reusable tunnel: %v", err)
		}
	}
}

// A bulk transfer arrives intact (the target digests what it received).
func TestKonnectivityClientBulkTransfer(t *testing.T) {
	payload := make([]byte, 16<<20)
	target := fixedDigestTarget(t, int64(len(payload)))
	for i := range payload {
		payload[i] = byte(i*7 + i/4096)
	}
	want := sha256.Sum256(payload)
	for _, g := range shared.grpcTransports() {
		t.Run(g.name, func(t *testing.T) {
			conn, err := g.singleUseDial(context.Background(), "tcp", target)
			if err != nil {
				t.Fatal(err)
			}
			got, err := transferFixed(conn, payload)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want[:]) {
				t.Errorf("digest mismatch: the target received different bytes")
			}
		})
	}
}

// transferFixed writes payload while reading the digest a fixedDigestTarget sends back.
func transferFixed(conn net.Conn, payload []byte) ([]byte, error) {
	defer conn.Close()
	errc := make(chan error, 1)
	go func() {
		// In 32 KiB writes, as io.Copy and TLS do: each Write is one gRPC
		// message, and gRPC servers (konnectivity-server's too) take at most 4 MiB.
		for rest := payload; len(rest) > 0; {
			n := min(len(rest), 32<<10)
			if _, err := conn.Write(rest[:n]); err != nil {
				errc <- err
				return
			}
			rest = rest[n:]
		}
		errc <- nil
	}()
	digest := make([]byte, sha256.Size)
	_, readErr := io.ReadFull(conn, digest)
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	if readErr != nil {
		return nil, fmt.Errorf("reading the digest: %w", readErr)
	}
	return digest, nil
}

// A dial to a closed port fails in the Go client with the agent's reason,
// classified by konnectivity-client as an endpoint failure.
func TestKonnectivityClientClosedPort(t *testing.T) {
	addr := closedPort(t)
	for _, g := range shared.grpcTransports() {
		t.Run(g.name, func(t *testing.T) {
			conn, err := g.singleUseDial(context.Background(), "tcp", addr)
			if err == nil {
				conn.Close()
				t.Fatalf("dial to closed port %s succeeded", addr)
			}
			if !strings.Contains(err.Error(), "refused") {
				t.Errorf("error %q does not say the connection was refused", err)
			}
			isDial, reason := client.GetDialFailureReason(err)
			if !isDial || reason != metrics.DialFailureEndpoint {
				t.Errorf("GetDialFailureReason(%v) = %v, %q; want an endpoint dial failure", err, isDial, reason)
			}
		})
	}
}

// A host no agent serves fails at once with a reason naming it.
func TestKonnectivityClientUnknownHost(t *testing.T) {
	for _, g := range shared.grpcTransports() {
		t.Run(g.name, func(t *testing.T) {
			conn, err := g.singleUseDial(context.Background(), "tcp", "node-z.example:10250")
			if err == nil {
				conn.Close()
				t.Fatal("dial to a host nobody serves succeeded")
			}
			if !strings.Contains(err.Error(), "node-z.example") {
				t.Errorf("error %q does not name the host", err)
			}
		})
	}
}

// When the client closes first, konnectivity-client's Close sends CLOSE_REQ
// and waits for CLOSE_RSP: it returns nil only if the server answers.
func TestKonnectivityClientCloseIsAcknowledged(t *testing.T) {
	_, plain := httpTargets(t)
	target := strings.TrimPrefix(plain.URL, "http://")
	for _, g := range shared.grpcTransports() {
		reusable, err := client.CreateGRPCTunnel(context.Background(), g.address, g.options...)
		if err != nil {
			t.Fatal(err)
		}
		dialers := map[string]func(context.Context, string, string) (net.Conn, error){
			"single-use": g.singleUseDial,
			"reusable":   reusable.DialContext,
		}
		for kind, dial := range dialers {
			t.Run(g.name+"/"+kind, func(t *testing.T) {
				conn, err := dial(context.Background(), "tcp", target)
				if err != nil {
					t.Fatal(err)
				}
				if err := conn.Close(); err != nil {
					t.Errorf("Close() = %v; want nil (CLOSE_RSP without error)", err)
				}
			})
		}
		if err := reusable.Close(); err != nil {
			t.Errorf("closing the reusable tunnel: %v", err)
		}
	}
}

// blackHole is a loopback listener whose accept queue is full: the kernel
// drops further SYNs, so a connection attempt to it never completes (Linux
// queues backlog+1 connections that nobody accepts).
func blackHole(t *testing.T) string {
	const backlog = 1
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; i <= backlog; i++ {
		c, err := net.DialTimeout("tcp", addr, hangGuard)
		if err != nil {
			t.Fatalf("filling the accept queue: %v", err)
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// A dial the client abandons (its context ends while the target does not
// answer) fails in the client as a context dial failure, and the client's
// DIAL_CLS (with the end of its stream) releases the server's pending dial:
// with --max-pending-dials 1 and an hour's dial timeout, the next dial is
// served only once the abandoned one is gone.
func TestKonnectivityClientAbandonedDialIsReleased(t *testing.T) {
	tn := newTunnelWith(t, "3600s", "--max-pending-dials", "1")
	t.Cleanup(func() { os.RemoveAll(tn.dir) })
	silent := blackHole(t)
	_, plain := httpTargets(t)
	target := strings.TrimPrefix(plain.URL, "http://")
	guard := time.Now().Add(hangGuard)
	for _, g := range tn.grpcTransports() {
		t.Run(g.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var abandoned chan error
			startSilentDial := func() {
				abandoned = make(chan error, 1)
				go func() {
					conn, err := g.singleUseDial(ctx, "tcp", silent)
					if err == nil {
						conn.Close()
					}
					abandoned <- err
				}()
			}
			startSilentDial()
			// The limit is in force: once the silent dial is pending, another
			// fails at once. (A probe that takes the slot first makes the silent
			// dial fail with the limit instead; it is then sent again.)
			for {
				conn, err := g.singleUseDial(context.Background(), "tcp", target)
				if err != nil {
					if !strings.Contains(err.Error(), "pending") {
						t.Fatalf("dial while one is pending: %v; want the pending-dial limit", err)
					}
					break
				}
				conn.Close()
				select {
				case err := <-abandoned:
					if err == nil || !strings.Contains(err.Error(), "pending") {
						t.Fatalf("the silent dial ended before it was abandoned: %v", err)
					}
					startSilentDial()
				default:
				}
				if time.Now().After(guard) {
					t.Fatal("hang guard: the silent dial never became pending")
				}
			}
			cancel()
			err := <-abandoned
			isDial, reason := client.GetDialFailureReason(err)
			if !isDial || reason != metrics.DialFailureContext {
				t.Fatalf("abandoned dial: GetDialFailureReason(%v) = %v, %q; want a context dial failure", err, isDial, reason)
			}
			// Released: a dial is served again (polled, as DIAL_CLS is sent asynchronously).
			for {
				conn, err := g.singleUseDial(context.Background(), "tcp", target)
				if err == nil {
					conn.Close()
					break
				}
				if time.Now().After(guard) {
					t.Fatalf("hang guard: the abandoned dial was never released: %v", err)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
