package connector

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// goAways is the agent's connector_agent_go_aways_total.
func goAways(t *testing.T, a *Agent) string {
	t.Helper()
	page, err := a.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(page, "\n") {
		if value, ok := strings.CutPrefix(line, "connector_agent_go_aways_total "); ok {
			return value
		}
	}
	t.Fatalf("no connector_agent_go_aways_total in\n%s", page)
	return ""
}

// startDrain drains srv (an hour's grace) on another goroutine, whose
// outcome arrives on the channel returned, once the drain has begun: until
// then a dial to target through an unknown agent fails with ErrNoAgent
// without leaving the server, and from then on with ErrClosed. A drain
// that returns while a connection is open (one that does nothing) fails t.
func startDrain(t *testing.T, srv *Server, target string) <-chan error {
	t.Helper()
	drained := make(chan error, 1)
	go func() { drained <- srv.Drain(time.Hour) }()
	nobody := &Dialer{Server: srv, AgentID: "nobody"}
	for {
		if _, err := nobody.DialContext(context.Background(), "tcp", target); !errors.Is(err, ErrNoAgent) {
			return drained
		}
		select {
		case err := <-drained:
			t.Fatalf("the drain returned with a connection open: %v", err)
		default:
			runtime.Gosched()
		}
	}
}

// Drain refuses new dials at once, tells the agent to go away, lets the
// connection already open carry bytes both ways, and returns once it is
// closed. The grace is an hour: a drain that waited it out would hit the
// test binary's timeout (run-tests.sh: 5 minutes).
func TestDrain(t *testing.T) {
	tn := newTunnel(t)
	target := echoTarget(t)
	conn, err := tn.srv.DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if n := goAways(t, tn.agent); n != "0" {
		t.Fatalf("GoAways before the drain: %s", n)
	}

	drained := startDrain(t, tn.srv, target)

	// A new dial is refused: the server is shutting down.
	_, err = tn.srv.DialContext(context.Background(), "tcp", target)
	var e *Error
	if !errors.Is(err, ErrClosed) || !errors.As(err, &e) || !strings.Contains(e.Message, "shutting down") {
		t.Fatalf("a dial during the drain: %v", err)
	}

	// The connection dialled before still carries bytes both ways.
	msg := []byte("still open while draining")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo while draining: %q, %v", got, err)
	}
	select {
	case err := <-drained:
		t.Fatalf("the drain returned with a connection open: %v", err)
	default:
	}

	// Once it is closed, the drain ends (well before its grace).
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
		t.Fatalf("EOF after half-close: %q, %v", rest, err)
	}
	conn.Close()
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
	// The agent was told to go away (it acknowledged before the drain ended).
	if n := goAways(t, tn.agent); n != "1" {
		t.Fatalf("GoAways seen by the agent: %s", n)
	}
	if err := tn.srv.Drain(time.Hour); err != nil {
		t.Fatalf("a second drain: %v", err)
	}
	if _, err := tn.srv.DialContext(context.Background(), "tcp", target); !errors.Is(err, ErrClosed) {
		t.Fatalf("a dial after the drain: %v", err)
	}
	if err := tn.srv.Close(); err != nil {
		t.Fatalf("close after the drain: %v", err)
	}
	if err := tn.srv.Drain(time.Hour); !errors.Is(err, ErrClosed) {
		t.Fatalf("drain after close: %v", err)
	}
}

// Close from another goroutine stops a drain in progress at once: Drain
// returns ErrClosed and the open connection ends.
func TestCloseStopsDrain(t *testing.T) {
	tn := newTunnel(t)
	conn, err := tn.srv.DialContext(context.Background(), "tcp", echoTarget(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	drained := startDrain(t, tn.srv, echoTarget(t))
	if err := tn.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-drained; !errors.Is(err, ErrClosed) {
		t.Fatalf("drain stopped by Close: %v", err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, net.ErrClosed) {
		t.Fatalf("the open connection outlived Close: %v", err)
	}
}
