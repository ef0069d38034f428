package connector

/*
#include "connector.h"
*/
import "C"

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
)

// Addr is the address of one end of a tunnelled connection.
type Addr struct {
	Net  string // "tcp" for the target, "connector" for the local end
	Addr string // the target's host:port, or "agent/AGENT-ID"
}

// Network returns the address's network name.
func (a Addr) Network() string { return a.Net }

// String returns the address.
func (a Addr) String() string { return a.Addr }

// Conn is a tunnelled TCP connection to a target in an agent's network. It
// implements net.Conn, including deadlines (a passed deadline fails Read
// and Write with an error matching os.ErrDeadlineExceeded) and concurrent
// Close, plus CloseWrite for a half-close.
//
// The bytes travel through a Unix socketpair between this process's Go
// netpoller and the library's runtime (see docs/ffi.md), so the errors of
// Read and Write are *net.OpError values as for any net.Conn; after Close
// they match net.ErrClosed (== ErrClosed).
type Conn struct {
	uc      *net.UnixConn
	stream  *streamHandle
	agentID string
	local   Addr
	remote  Addr
}

// streamHandle frees the library's stream handle once, on Close or, as a
// safety net, when an unclosed Conn is garbage collected.
type streamHandle struct {
	once sync.Once
	h    *C.connector_stream
}

// status is the library's record of how the stream ended: nil while it
// runs, after a clean end, or once the handle is freed.
func (s *streamHandle) status(op string) *Error {
	var ended C.connector_result
	var reason *C.char
	if C.connector_stream_status(s.h, &ended, &reason, nil) != C.CONNECTOR_OK || ended == C.CONNECTOR_OK {
		return nil
	}
	return newError(op, Code(ended), takeString(reason))
}

func (s *streamHandle) free() {
	s.once.Do(func() { C.connector_stream_free(s.h, nil) })
}

func newConn(uc *net.UnixConn, h *C.connector_stream, agentID, target string) *Conn {
	c := &Conn{
		uc:      uc,
		stream:  &streamHandle{h: h},
		agentID: agentID,
		local:   Addr{Net: "connector", Addr: "agent/" + agentID},
		remote:  Addr{Net: "tcp", Addr: target},
	}
	runtime.AddCleanup(c, func(s *streamHandle) { s.free() }, c.stream)
	return c
}

// Read reads what the target sent; io.EOF once the target closed its side.
// When the connection broke instead (the target reset it, the agent or
// the server went away), Read returns an *Error matching ErrIO; when the
// agent closed it for its tunnel idle timeout, one matching ErrTimeout.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.uc.Read(b)
	if err != nil {
		err = c.why("read", err)
	}
	return n, err
}

// Write sends b to the target. Like Read, it reports a broken connection
// as an *Error.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.uc.Write(b)
	if err != nil {
		err = c.why("write", err)
	}
	return n, err
}

// why replaces the socketpair's error (io.EOF, a reset, a broken pipe) by
// the reason the library recorded when the tunnel broke, if it did. The
// library records it before closing its end, so it is known by the time
// the socketpair reports the end.
func (c *Conn) why(op string, err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if broken := c.stream.status(op); broken != nil {
		return broken
	}
	return err
}

// Close closes the connection. Pending Read and Write calls return
// errors. Data written before Close still reaches the target, which then
// sees the connection end.
func (c *Conn) Close() error {
	err := c.uc.Close()
	c.stream.free()
	return err
}

// CloseWrite half-closes the connection: the target reads end of stream
// and may still answer, which Read returns.
func (c *Conn) CloseWrite() error { return c.uc.CloseWrite() }

// LocalAddr is "agent/AGENT-ID", the agent carrying the connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the target address as dialled.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// AgentID is the id of the agent carrying the connection.
func (c *Conn) AgentID() string { return c.agentID }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.uc.SetDeadline(t) }

// SetReadDeadline sets the deadline for pending and future Reads; a zero
// value means none.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for pending and future Writes; a zero
// value means none.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }
