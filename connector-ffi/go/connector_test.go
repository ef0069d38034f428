package connector

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// tunnel is a server and one agent ("node-a", serving 127.0.0.1) over real
// QUIC on loopback.
type tunnel struct {
	srv   *Server
	agent *Agent
	ca    []byte
}

func newTunnel(t testing.TB) *tunnel { return newTunnelWith(t, nil) }

// newTunnelWith is newTunnel with the server's Config changed by edit.
func newTunnelWith(t testing.TB, edit func(*Config)) *tunnel {
	t.Helper()
	ca, cert, key, err := ThrowawayCertificates("localhost,127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Listen:        "127.0.0.1:0",
		CertPEM:       cert,
		KeyPEM:        key,
		Tokens:        []Token{{Token: "token-a", Name: "node-a", Allowed: "host=node-a,cidr=127.0.0.0/8"}},
		WorkerThreads: 2,
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	agent := startAgent(t, srv, ca, "node-a", "token-a")
	if err := agent.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitForAgent(context.Background(), "node-a"); err != nil {
		t.Fatal(err)
	}
	return &tunnel{srv: srv, agent: agent, ca: ca}
}

func startAgent(t testing.TB, srv *Server, ca []byte, id, token string) *Agent {
	t.Helper()
	agent, err := NewAgent(AgentConfig{
		Server:        srv.Addr(),
		ServerName:    "localhost",
		ServerCAPEM:   ca,
		AgentID:       id,
		Token:         token,
		Identifiers:   "ipv4=127.0.0.1",
		Allow:         []string{"127.0.0.1/32"},
		WorkerThreads: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	return agent
}

// echoTarget echoes each connection until EOF, then half-closes.
func echoTarget(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

func TestNettestConn(t *testing.T) {
	tn := newTunnel(t)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, nil, err
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
		c1, err = tn.srv.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			return nil, nil, nil, err
		}
		c2 = <-accepted
		if c2 == nil {
			c1.Close()
			return nil, nil, nil, errors.New("accept failed")
		}
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

func TestHTTPThroughTunnel(t *testing.T) {
	tn := newTunnel(t)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	defer web.Close()
	transport := &http.Transport{DialContext: tn.srv.DialContext}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	for i := range 3 { // also reuses the kept-alive connection
		resp, err := client.Get(fmt.Sprintf("%s/path-%d", web.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != fmt.Sprintf("hello /path-%d", i) {
			t.Fatalf("body %q, err %v", body, err)
		}
	}
}

func TestConcurrentDials(t *testing.T) {
	tn := newTunnel(t)
	target := echoTarget(t)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			want := make([]byte, 32*1024+i)
			rand.Read(want)
			c, err := tn.srv.DialContext(context.Background(), "tcp", target)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			go func() {
				c.Write(want)
				c.(*Conn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, want) {
				errs <- fmt.Errorf("connection %d: got %d bytes back, want %d equal ones", i, len(got), len(want))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestReadDeadlineThenExtend(t *testing.T) {
	tn := newTunnel(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	speak := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		<-speak // silent until told
		c.Write([]byte("late"))
	}()
	c, err := tn.srv.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 16)
	_, err = c.Read(buf)
	if !errors.Is(err, os.ErrDeadlineExceeded) || !os.IsTimeout(err) {
		t.Fatalf("read on a silent peer: %v, want a deadline error", err)
	}
	c.SetReadDeadline(time.Time{})
	close(speak)
	n, err := io.ReadFull(c, buf[:4])
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("after extending the deadline: %q, %v", buf[:n], err)
	}
}

// hangingTarget is a listener whose accept queue is full, so a TCP connect
// to it stays pending.
func hangingTarget(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue (never accepted).
	for range 2 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return addr
}

// hangGuard only catches a hang: a call that should have ended and did not.
const hangGuard = 60 * time.Second

// inCgoCall reports whether a goroutine is inside the C function fn.
func inCgoCall(fn string) bool {
	buf := make([]byte, 1<<22)
	n := runtime.Stack(buf, true)
	return strings.Contains(string(buf[:n]), "._Cfunc_"+fn+"(")
}

// dialInProgress dials target on another goroutine and returns once that
// goroutine is inside the C dial call, with the channel its outcome will
// arrive on. If the dial ends before it was seen in C, it returns that
// error and a nil channel instead.
func dialInProgress(t *testing.T, srv *Server, ctx context.Context, target string) (<-chan error, error) {
	t.Helper()
	result := make(chan error, 1)
	go func() {
		c, err := srv.DialContext(ctx, "tcp", target)
		if c != nil {
			c.Close()
		}
		result <- err
	}()
	guard := time.After(hangGuard)
	for !inCgoCall("connector_server_dial_fd") {
		select {
		case err := <-result:
			return nil, err
		case <-guard:
			t.Fatal("the dial never reached the C call")
		case <-time.After(time.Millisecond): // poll again
		}
	}
	return result, nil
}

func awaitDial(t *testing.T, result <-chan error) error {
	t.Helper()
	select {
	case err := <-result:
		return err
	case <-time.After(hangGuard):
		t.Fatal("the dial was not aborted")
		return nil
	}
}

// A dial already blocked inside the library (the agent's TCP connect to a
// full accept queue never completes, and the library's own dial timeout is
// an hour) ends when its context is cancelled or its deadline passes.
func TestCancelledContextAbortsPendingDial(t *testing.T) {
	tn := newTunnelWith(t, func(c *Config) { c.Limits.DialTimeout = time.Hour })
	target := hangingTarget(t)
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		result, early := dialInProgress(t, tn.srv, ctx, target)
		if result == nil {
			t.Fatalf("the dial ended before the cancel: %v", early)
		}
		cancel()
		err := awaitDial(t, result)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrCancelled) {
			t.Fatalf("dial cancelled in progress: %v", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		// The deadline must pass while the dial is inside the library; if the
		// goroutine was too slow to get there, retry with a longer one.
		for wait := 50 * time.Millisecond; ; wait *= 2 {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			result, early := dialInProgress(t, tn.srv, ctx, target)
			if result == nil {
				cancel()
				if !errors.Is(early, context.DeadlineExceeded) {
					t.Fatalf("dial past the context deadline: %v", early)
				}
				if wait > hangGuard {
					t.Fatal("the dial never reached the C call before its deadline")
				}
				continue
			}
			err := awaitDial(t, result)
			cancel()
			var e *Error
			if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrTimeout) || !os.IsTimeout(err) ||
				!errors.As(err, &e) || e.Code != CodeTimedOut {
				t.Fatalf("dial whose context deadline passed in progress: %v", err)
			}
			return
		}
	})
	// The aborted dials left the server usable.
	c, err := tn.srv.DialContext(context.Background(), "tcp", echoTarget(t))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestCloseWrite(t *testing.T) {
	tn := newTunnel(t)
	// The target answers with a digest of everything it read, only after EOF.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		c.Write(h.Sum(nil))
	}()
	c, err := tn.srv.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 200_000)
	rand.Read(data)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := c.(*Conn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	want := sha256.Sum256(data)
	if err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("digest after half-close: %x, %v", got, err)
	}
}

func TestDialErrors(t *testing.T) {
	tn := newTunnel(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	_, err := tn.srv.DialContext(context.Background(), "tcp", closed)
	var e *Error
	if !errors.Is(err, ErrRefused) || !errors.As(err, &e) || e.Code != CodeRefused {
		t.Fatalf("dial to a closed port: %v", err)
	}
	if _, err := tn.srv.DialContext(context.Background(), "tcp", "no-port"); !errors.Is(err, ErrInvalidTarget) {
		t.Fatalf("bad target: %v", err)
	}
	if _, err := tn.srv.DialContext(context.Background(), "udp", closed); !errors.Is(err, ErrUnknownNetwork) {
		t.Fatalf("udp: %v", err)
	}
	d := &Dialer{Server: tn.srv, AgentID: "nobody"}
	if _, err := d.DialContext(context.Background(), "tcp", closed); !errors.Is(err, ErrNoAgent) {
		t.Fatalf("unknown agent: %v", err)
	}
	if _, err := (&Dialer{Server: tn.srv, Host: "elsewhere"}).DialContext(context.Background(), "tcp", closed); !errors.Is(err, ErrNoAgent) {
		t.Fatalf("unserved host: %v", err)
	}
	// Policy: the agent only allows 127.0.0.1/32.
	if _, err := (&Dialer{Server: tn.srv, AgentID: "node-a"}).DialContext(context.Background(), "tcp", "127.0.0.2:80"); !errors.Is(err, ErrDenied) {
		t.Fatalf("denied target: %v", err)
	}
}

func TestExplicitAgent(t *testing.T) {
	tn := newTunnel(t)
	target := echoTarget(t)
	d := &Dialer{Server: tn.srv, AgentID: "node-a"}
	c, err := d.DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.LocalAddr().String() != "agent/node-a" || c.RemoteAddr().String() != target {
		t.Fatalf("addresses %v -> %v", c.LocalAddr(), c.RemoteAddr())
	}
}

func TestUseAfterClose(t *testing.T) {
	tn := newTunnel(t)
	target := echoTarget(t)
	c, err := tn.srv.DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	// Close while a Read is pending.
	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		readErr <- err
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("pending read after Close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	c.Close() // twice: no crash
	tn.agent.Close()
	tn.agent.Close()
	if err := tn.agent.WaitConnected(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("agent after Close: %v", err)
	}
	tn.srv.Close()
	tn.srv.Close()
	if _, err := tn.srv.DialContext(context.Background(), "tcp", target); !errors.Is(err, ErrClosed) {
		t.Fatalf("dial after Close: %v", err)
	}
	if _, err := tn.srv.AgentCount(); !errors.Is(err, ErrClosed) {
		t.Fatalf("agent count after Close: %v", err)
	}
}

func TestAuthenticateCallback(t *testing.T) {
	ca, cert, key, err := ThrowawayCertificates("localhost")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []AuthRequest
	srv, err := NewServer(Config{
		Listen:  "127.0.0.1:0",
		CertPEM: cert,
		KeyPEM:  key,
		Authenticate: func(r AuthRequest) (Identity, error) {
			mu.Lock()
			seen = append(seen, r)
			mu.Unlock()
			if string(r.Token) == "reviewed-token" {
				return Identity{Name: "system:node:" + r.AgentID, Allowed: "host=" + r.AgentID + ",cidr=127.0.0.0/8"}, nil
			}
			return Identity{}, errors.New("TokenReview: not authenticated")
		},
		WorkerThreads: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	good := startAgent(t, srv, ca, "node-go", "reviewed-token")
	if err := good.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	bad := startAgent(t, srv, ca, "node-bad", "stolen-token")
	err = bad.WaitConnected(context.Background())
	if !errors.Is(err, ErrRejected) || !bytes.Contains([]byte(err.Error()), []byte("TokenReview: not authenticated")) {
		t.Fatalf("bad agent: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 || seen[0].AgentID == "" || seen[0].Identifiers != "ipv4=127.0.0.1" || seen[0].RemoteAddr == "" {
		t.Fatalf("callback saw %+v", seen)
	}
}

// authServer starts a server whose only authentication is authenticate.
func authServer(t *testing.T, authenticate func(AuthRequest) (Identity, error)) (*Server, []byte) {
	t.Helper()
	ca, cert, key, err := ThrowawayCertificates("localhost")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Config{Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, Authenticate: authenticate, WorkerThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, ca
}

// Close waits for an Authenticate call in progress (the library then frees
// what it was given), however long it takes.
func TestCloseWaitsForAuthenticate(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var finished atomic.Bool
	srv, ca := authServer(t, func(AuthRequest) (Identity, error) {
		once.Do(func() { close(entered) })
		<-release
		time.Sleep(50 * time.Millisecond) // still running a while after being let go
		finished.Store(true)
		return Identity{}, errors.New("held")
	})
	startAgent(t, srv, ca, "node-held", "some-token")
	select {
	case <-entered:
	case <-time.After(time.Minute):
		t.Fatal("Authenticate was never called")
	}
	closed := make(chan bool)
	go func() {
		srv.Close()
		closed <- finished.Load()
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while Authenticate was running")
	case <-time.After(time.Second):
	}
	close(release)
	if !<-closed {
		t.Fatal("Close returned before Authenticate did")
	}
}

// Close called inside Authenticate cannot wait for that call: it returns at
// once, and the server is freed once Authenticate has returned.
func TestCloseInsideAuthenticate(t *testing.T) {
	var srv *Server
	ready := make(chan struct{})
	closeErr := make(chan error, 1)
	srv, ca := authServer(t, func(AuthRequest) (Identity, error) {
		<-ready
		closeErr <- srv.Close()
		if _, err := srv.AgentCount(); !errors.Is(err, ErrClosed) {
			return Identity{}, fmt.Errorf("after Close inside Authenticate, AgentCount: %v", err)
		}
		return Identity{}, errors.New("closing")
	})
	close(ready)
	startAgent(t, srv, ca, "node-closer", "some-token")
	select {
	case err := <-closeErr:
		if err != nil {
			t.Fatalf("Close inside Authenticate: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Authenticate was never called")
	}
	select {
	case <-srv.freed:
	case <-time.After(time.Minute):
		t.Fatal("the server was never freed")
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestBadConfig(t *testing.T) {
	_, err := NewServer(Config{Listen: "nonsense"})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad listen: %v", err)
	}
	_, cert, key, _ := ThrowawayCertificates("localhost")
	_, err = NewServer(Config{Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key})
	if !errors.Is(err, ErrSetup) {
		t.Fatalf("no authentication: %v", err)
	}
	_, err = NewAgent(AgentConfig{Server: "localhost:1", AgentID: "x", Token: "t"})
	if !errors.Is(err, ErrSetup) {
		t.Fatalf("agent without CA: %v", err)
	}
	_, err = NewAgent(AgentConfig{Server: "localhost:1", Allow: []string{"not a rule"}})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad rule: %v", err)
	}
}

func TestFrontends(t *testing.T) {
	tn := newTunnel(t)
	target := echoTarget(t)
	where, err := tn.srv.StartFrontend(HTTPConnect, "tcp://127.0.0.1:0", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := net.Dial("tcp", where[len("tcp://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	fmt.Fprintf(proxy, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	head := make([]byte, 12)
	if _, err := io.ReadFull(proxy, head); err != nil || string(head) != "HTTP/1.1 200" {
		t.Fatalf("CONNECT answer %q, %v", head, err)
	}
	if _, err := tn.srv.StartFrontend(GRPC, "tcp://127.0.0.1:0", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.srv.StartFrontend(GRPC, "tcp://10.1.2.3:0", nil, nil); !errors.Is(err, ErrSetup) {
		t.Fatalf("non-loopback plain frontend: %v", err)
	}
	fwd, err := tn.srv.StartForward("127.0.0.1:0", "node-a", target)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("fwd"))
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "fwd" {
		t.Fatalf("forward echo %q, %v", buf, err)
	}
}

func TestMutualTLSAgent(t *testing.T) {
	ca, cert, key, err := ThrowawayCertificates("localhost")
	if err != nil {
		t.Fatal(err)
	}
	clientCA, clientCert, clientKey, err := ThrowawayCertificates("node-m,127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Config{Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, ClientCAPEM: clientCA, WorkerThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	agent, err := NewAgent(AgentConfig{
		Server: srv.Addr(), ServerName: "localhost", ServerCAPEM: ca,
		AgentID: "node-m", CertPEM: clientCert, KeyPEM: clientKey,
		Identifiers: "ipv4=127.0.0.1", Allow: []string{"127.0.0.1/32"}, WorkerThreads: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	if err := agent.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	target := echoTarget(t)
	c, err := srv.DialContext(context.Background(), "tcp", target) // 127.0.0.1 is in node-m's certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("mtls"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "mtls" || c.(*Conn).AgentID() != "node-m" {
		t.Fatalf("echo %q via %s: %v", buf, c.(*Conn).AgentID(), err)
	}
}

// Closing the server while dials and transfers run on other goroutines ends
// them with errors (ErrClosed for dials that start after Close), never a crash.
func TestCloseWhileInUse(t *testing.T) {
	tn := newTunnel(t)
	target := echoTarget(t)
	var wg sync.WaitGroup
	started := make(chan struct{}, 20)
	for range 20 {
		wg.Go(func() {
			c, err := tn.srv.DialContext(context.Background(), "tcp", target)
			started <- struct{}{}
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 1024)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
			}
		})
	}
	for range 20 {
		<-started
	}
	tn.srv.Close()
	wg.Wait()
	if _, err := tn.srv.DialContext(context.Background(), "tcp", target); !errors.Is(err, ErrClosed) {
		t.Fatalf("dial after Close: %v", err)
	}
}

// A call that passes its closed check just before another goroutine's
// Close frees the handle reports ErrClosed, as a call after Close does
// (the library sees a freed handle: CodeInvalidHandle).
func TestCallRacingClose(t *testing.T) {
	ca, cert, key, err := ThrowawayCertificates("localhost,127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	// closeInWindow makes the next call close c right after its closed check.
	closeInWindow := func(c io.Closer) {
		hook := func() {
			afterClosedCheck.Store(nil)
			c.Close()
		}
		afterClosedCheck.Store(&hook)
	}
	t.Cleanup(func() { afterClosedCheck.Store(nil) })
	check := func(t *testing.T, err error) {
		t.Helper()
		var e *Error
		if !errors.Is(err, ErrClosed) || errors.Is(err, ErrInvalidHandle) || !errors.As(err, &e) || e.Code != CodeClosed {
			t.Fatalf("call racing Close: %v", err)
		}
	}
	ctx := context.Background()
	serverCalls := map[string]func(*Server) error{
		"AgentCount":   func(s *Server) error { _, err := s.AgentCount(); return err },
		"WaitForAgent": func(s *Server) error { return s.WaitForAgent(ctx, "node-a") },
		"DialContext":  func(s *Server) error { _, err := s.DialContext(ctx, "tcp", "127.0.0.1:1"); return err },
		"StartFrontend": func(s *Server) error {
			_, err := s.StartFrontend(HTTPConnect, "tcp://127.0.0.1:0", nil, nil)
			return err
		},
		"StartForward": func(s *Server) error { _, err := s.StartForward("127.0.0.1:0", "", "127.0.0.1:1"); return err },
	}
	for name, call := range serverCalls {
		t.Run(name, func(t *testing.T) {
			srv, err := NewServer(Config{Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, Tokens: []Token{{Token: "t", Name: "n", Allowed: "*"}}, WorkerThreads: 1})
			if err != nil {
				t.Fatal(err)
			}
			closeInWindow(srv)
			check(t, call(srv))
		})
	}
	agentCalls := map[string]func(*Agent) error{
		"WaitConnected": func(a *Agent) error { return a.WaitConnected(ctx) },
		"Sessions":      func(a *Agent) error { _, _, err := a.Sessions(); return err },
		"WaitSessions":  func(a *Agent) error { return a.WaitSessions(ctx, 1) },
	}
	for name, call := range agentCalls {
		t.Run(name, func(t *testing.T) {
			agent, err := NewAgent(AgentConfig{Server: "127.0.0.1:1", ServerName: "localhost", ServerCAPEM: ca, AgentID: "a", Token: "t", WorkerThreads: 1})
			if err != nil {
				t.Fatal(err)
			}
			closeInWindow(agent)
			check(t, call(agent))
		})
	}
}

// A connection that breaks (target reset, agent gone) ends Read with an
// *Error saying so, not with the io.EOF of a clean end.
func TestBrokenConnectionIsAnError(t *testing.T) {
	tn := newTunnel(t)
	wantIO := func(t *testing.T, what string, err error) {
		t.Helper()
		var e *Error
		if !errors.Is(err, ErrIO) || errors.Is(err, io.EOF) || !errors.As(err, &e) || e.Code != CodeIO {
			t.Fatalf("%s: %v", what, err)
		}
	}
	t.Run("target reset", func(t *testing.T) {
		target, accepted := silentTarget(t)
		c, err := tn.srv.DialContext(context.Background(), "tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		peer := (<-accepted).(*net.TCPConn)
		peer.SetLinger(0)
		peer.Close() // RST
		err = readEnds(t, c)
		wantIO(t, "read after a target reset", err)
		if !strings.Contains(err.Error(), "reset") {
			t.Fatalf("reason: %v", err)
		}
		_, err = c.Write([]byte("x"))
		wantIO(t, "write after a target reset", err)
	})
	t.Run("agent gone", func(t *testing.T) {
		// The server notices the agent's absence by its idle timeout (a
		// freed agent's goodbye is not always sent before its runtime stops).
		tn := newTunnelWith(t, func(c *Config) { c.IdleTimeout = time.Second; c.Keepalive = 100 * time.Millisecond })
		agent := startAgentWith(t, tn, "node-a/gone", func(*AgentConfig) {})
		target, _ := silentTarget(t)
		c, err := (&Dialer{Server: tn.srv, AgentID: "node-a/gone"}).DialContext(context.Background(), "tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		agent.Close()
		wantIO(t, "read after the agent left", readEnds(t, c))
	})
	t.Run("clean end", func(t *testing.T) {
		target, accepted := silentTarget(t)
		c, err := tn.srv.DialContext(context.Background(), "tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		(<-accepted).Close()
		if err := readEnds(t, c); err != io.EOF {
			t.Fatalf("read after the target closed: %v", err)
		}
	})
}
