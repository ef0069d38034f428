package connector

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// Tests that each server, agent and frontend setting takes effect.

// silentTarget accepts connections and hands them over without reading
// or writing.
func silentTarget(t *testing.T) (string, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			accepted <- c
		}
	}()
	return ln.Addr().String(), accepted
}

// readEnds reads c until it fails and returns that error; a hang is a failure.
func readEnds(t *testing.T, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(hangGuard))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the connection did not end")
	}
	return err
}

func TestMaxPendingDials(t *testing.T) {
	tn := newTunnelWith(t, func(c *Config) {
		c.Limits.DialTimeout = time.Hour
		c.Limits.MaxPendingDials = 1
	})
	target := hangingTarget(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Two dials at a target that never answers: one holds the only pending
	// slot, the other fails at once (without the limit both would wait).
	results := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := tn.srv.DialContext(ctx, "tcp", target)
			results <- err
		}()
	}
	select {
	case err := <-results:
		var e *Error
		if !errors.Is(err, ErrOverloaded) || !errors.As(err, &e) || e.Code != CodeOverloaded {
			t.Fatalf("the dial beyond the pending limit: %v", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("no dial was refused")
	}
	cancel()
	if err := awaitDial(t, results); !errors.Is(err, context.Canceled) {
		t.Fatalf("the pending dial: %v", err)
	}
}

func TestServerCountIsAnnouncedToAgents(t *testing.T) {
	tn := newTunnelWith(t, func(c *Config) { c.ServerCount = 3 })
	held, expected, err := tn.agent.Sessions()
	if err != nil || expected != 3 || len(held) != 1 || held[0].ServerID != "connector" || held[0].Transport != "quic" {
		t.Fatalf("sessions %+v, expecting %d replicas, %v", held, expected, err)
	}
	if _, err := NewServer(Config{ServerCount: -1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("negative server count: %v", err)
	}
}

func TestAgentHoldsEveryListedServer(t *testing.T) {
	ca, cert, key, err := ThrowawayCertificates("localhost,127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	var servers []*Server
	for i := range 2 {
		srv, err := NewServer(Config{
			Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, ServerID: fmt.Sprintf("replica-%d", i),
			Tokens: []Token{{Token: "token-a", Name: "node-a", Allowed: "*"}}, WorkerThreads: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		servers = append(servers, srv)
	}
	agent, err := NewAgent(AgentConfig{
		Server: servers[0].Addr(), Servers: []string{servers[1].Addr()}, ServerName: "localhost", ServerCAPEM: ca,
		AgentID: "node-a", Token: "token-a", Allow: []string{"127.0.0.1/32"}, WorkerThreads: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := agent.WaitSessions(ctx, 2); err != nil {
		t.Fatal(err)
	}
	held, expected, err := agent.Sessions()
	if err != nil || expected != 2 || len(held) != 2 || held[0].ServerID == held[1].ServerID {
		t.Fatalf("sessions %+v, expecting %d, %v", held, expected, err)
	}
	target := echoTarget(t)
	for _, srv := range servers { // every replica dials through the agent
		c, err := (&Dialer{Server: srv, AgentID: "node-a"}).DialContext(ctx, "tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

func TestTCPFallbackListenerAndTransport(t *testing.T) {
	ca, cert, key, err := ThrowawayCertificates("localhost,127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tokens := []Token{{Token: "token-a", Name: "node-a", Allowed: "*"}}
	off, err := NewServer(Config{Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, Tokens: tokens, TCPListen: "off", WorkerThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	off.Close()
	if off.TCPAddr() != "" {
		t.Fatalf("TCP listener with TCPListen off: %q", off.TCPAddr())
	}
	// The TCP listener on a port of its own; the agent told to use TCP, there.
	srv, err := NewServer(Config{Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, Tokens: tokens, TCPListen: "127.0.0.1:0", WorkerThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if srv.TCPAddr() == "" || srv.TCPAddr() == srv.Addr() {
		t.Fatalf("TCP listener %q (QUIC on %q)", srv.TCPAddr(), srv.Addr())
	}
	agent, err := NewAgent(AgentConfig{
		Server: srv.Addr(), TCPServer: srv.TCPAddr(), Transport: "tcp", ServerName: "localhost", ServerCAPEM: ca,
		AgentID: "node-a", Token: "token-a", Allow: []string{"127.0.0.1/32"}, WorkerThreads: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := agent.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	held, _, err := agent.Sessions()
	if err != nil || len(held) != 1 || held[0].Transport != "tcp" {
		t.Fatalf("sessions %+v, %v", held, err)
	}
	c, err := (&Dialer{Server: srv, AgentID: "node-a"}).DialContext(ctx, "tcp", echoTarget(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("over tcp"))
	buf := make([]byte, 8)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "over tcp" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	if _, err := NewAgent(AgentConfig{Server: "localhost:1", Transport: "carrier-pigeon"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("unknown transport: %v", err)
	}
}

func TestTunnelIdleTimeout(t *testing.T) {
	tn := newTunnel(t)
	startAgentWith(t, tn, "node-a/idle", func(c *AgentConfig) { c.TunnelIdleTimeout = 100 * time.Millisecond })
	target, _ := silentTarget(t)
	// Without the timeout a silent connection stays open (the read hangs).
	c, err := (&Dialer{Server: tn.srv, AgentID: "node-a/idle"}).DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var e *Error
	if err := readEnds(t, c); !errors.Is(err, ErrTimeout) || !errors.As(err, &e) || e.Code != CodeTimedOut ||
		!strings.Contains(e.Message, "idle") {
		t.Fatalf("idle tunnelled connection: %v", err)
	}
}

func TestTunnelStallTimeout(t *testing.T) {
	tn := newTunnel(t)
	startAgentWith(t, tn, "node-a/stall", func(c *AgentConfig) { c.TunnelStallTimeout = 200 * time.Millisecond })
	target, _ := silentTarget(t)
	c, err := (&Dialer{Server: tn.srv, AgentID: "node-a/stall"}).DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// An upload into a target that never reads: without the timeout the writes block for good.
	c.SetWriteDeadline(time.Now().Add(hangGuard))
	chunk := make([]byte, 64<<10)
	for err == nil {
		_, err = c.Write(chunk)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the stalled upload was not closed")
	}
	if err := readEnds(t, c); !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("stalled tunnelled connection: %v", err)
	}
}

// startAgentWith starts another agent on tn's server (token "token-a",
// which may claim anything in 127.0.0.0/8) with its config changed by edit.
func startAgentWith(t *testing.T, tn *tunnel, id string, edit func(*AgentConfig)) *Agent {
	t.Helper()
	cfg := AgentConfig{
		Server: tn.srv.Addr(), ServerName: "localhost", ServerCAPEM: tn.ca, AgentID: id, Token: "token-a",
		Allow: []string{"127.0.0.1/32"}, WorkerThreads: 1,
	}
	edit(&cfg)
	agent, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := agent.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tn.srv.WaitForAgent(ctx, id); err != nil {
		t.Fatal(err)
	}
	return agent
}

// The idle timeout ends a silent agent connection (and its tunnelled
// connections); a keepalive shorter than it keeps the connection up.
func TestKeepaliveAndIdleTimeout(t *testing.T) {
	// The read deadline is five times the idle timeouts set here and below
	// the 30s default: the connection must end before it (idle timeout
	// applied), or outlive it (keepalive applied).
	const idle = time.Second
	const watch = 5 * idle
	silentFor := func(t *testing.T, tn *tunnel, agentID string) error {
		t.Helper()
		target, accepted := silentTarget(t)
		c, err := (&Dialer{Server: tn.srv, AgentID: agentID}).DialContext(context.Background(), "tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		peer := <-accepted
		c.SetReadDeadline(time.Now().Add(watch))
		_, err = c.Read(make([]byte, 1))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Still up: it carries data.
			c.SetReadDeadline(time.Now().Add(hangGuard))
			peer.Write([]byte("!"))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				t.Fatalf("connection kept alive, then: %v", err)
			}
			return nil
		}
		if err == nil {
			t.Fatal("read data from a silent target")
		}
		return err
	}
	t.Run("server idle timeout", func(t *testing.T) {
		tn := newTunnelWith(t, func(c *Config) { c.IdleTimeout = idle; c.Keepalive = time.Hour })
		startAgentWith(t, tn, "node-a/k", func(c *AgentConfig) { c.Keepalive = time.Hour })
		if err := silentFor(t, tn, "node-a/k"); err == nil {
			t.Fatal("the connection outlived the server's idle timeout")
		}
	})
	t.Run("agent idle timeout", func(t *testing.T) {
		tn := newTunnelWith(t, func(c *Config) { c.Keepalive = time.Hour })
		startAgentWith(t, tn, "node-a/k", func(c *AgentConfig) { c.IdleTimeout = idle; c.Keepalive = time.Hour })
		if err := silentFor(t, tn, "node-a/k"); err == nil {
			t.Fatal("the connection outlived the agent's idle timeout")
		}
	})
	// With the idle timeout on both ends and the other end's keepalive at
	// its 5s default, only this end's keepalive can keep the connection up.
	t.Run("server keepalive", func(t *testing.T) {
		tn := newTunnelWith(t, func(c *Config) { c.IdleTimeout = idle; c.Keepalive = 100 * time.Millisecond })
		startAgentWith(t, tn, "node-a/k", func(c *AgentConfig) { c.IdleTimeout = idle })
		if err := silentFor(t, tn, "node-a/k"); err != nil {
			t.Fatalf("kept-alive connection: %v", err)
		}
	})
	t.Run("agent keepalive", func(t *testing.T) {
		tn := newTunnelWith(t, func(c *Config) { c.IdleTimeout = idle })
		startAgentWith(t, tn, "node-a/k", func(c *AgentConfig) { c.IdleTimeout = idle; c.Keepalive = 100 * time.Millisecond })
		if err := silentFor(t, tn, "node-a/k"); err != nil {
			t.Fatalf("kept-alive connection: %v", err)
		}
	})
}

// connectAnswer sends a CONNECT to target (with extra header bytes) on c
// and returns the answer's status line and body.
func connectAnswer(t *testing.T, c net.Conn, target string, padding int) (string, string) {
	t.Helper()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nX-Padding: %s\r\n\r\n", target, target, strings.Repeat("p", padding))
	return readAnswer(t, c)
}

func readAnswer(t *testing.T, c net.Conn) (string, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(hangGuard))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil {
		return "", err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.Status, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.Status, string(body)
}

func TestFrontendLimits(t *testing.T) {
	tn := newTunnel(t)
	target := echoTarget(t)
	dial := func(where string) net.Conn {
		c, err := net.Dial("tcp", strings.TrimPrefix(where, "tcp://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("max connections", func(t *testing.T) {
		where, err := tn.srv.StartFrontend(HTTPConnect, "tcp://127.0.0.1:0", nil, &FrontendLimits{MaxConnections: 1, HeadTimeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		first := dial(where)
		second := dial(where)
		// The second is closed on arrival (with the default limit it would
		// wait for its head for an hour); the first is served.
		readEnds(t, second)
		if status, body := connectAnswer(t, first, target, 0); !strings.HasPrefix(status, "200") {
			t.Fatalf("first connection: %s %s", status, body)
		}
	})
	t.Run("max head", func(t *testing.T) {
		where, err := tn.srv.StartFrontend(HTTPConnect, "tcp://127.0.0.1:0", nil, &FrontendLimits{MaxHead: 128})
		if err != nil {
			t.Fatal(err)
		}
		if status, body := connectAnswer(t, dial(where), target, 200); !strings.HasPrefix(status, "431") || !strings.Contains(body, "larger than 128 bytes") {
			t.Fatalf("oversized head: %s %s", status, body)
		}
		if status, body := connectAnswer(t, dial(where), target, 0); !strings.HasPrefix(status, "200") {
			t.Fatalf("small head: %s %s", status, body)
		}
	})
	t.Run("head timeout", func(t *testing.T) {
		where, err := tn.srv.StartFrontend(HTTPConnect, "tcp://127.0.0.1:0", nil, &FrontendLimits{HeadTimeout: 150 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		// A client that sends nothing gets 408 naming the configured timeout.
		if status, body := readAnswer(t, dial(where)); !strings.HasPrefix(status, "408") || !strings.Contains(body, "within 150ms") {
			t.Fatalf("silent client: %s %s", status, body)
		}
	})
}
