package connector

/*
#include <stdlib.h>
#include "connector.h"
extern void goConnectorAuthenticate(void *user_data, connector_auth_request *request, connector_auth_decision *decision);
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Limits bounds what agents may use on a Server. Zero fields keep the
// library's defaults.
type Limits struct {
	MaxAgents          int           // agents connected at once (default 10,000)
	MaxStreamsPerAgent int           // tunnelled connections per agent (default 10,000)
	HelloTimeout       time.Duration // time an agent has to send its Hello (default 10s)
	DialTimeout        time.Duration // dial deadline when the context has none (default 30s)
	// MaxPendingDials bounds the dials waiting for their agent's answer at
	// once, across all agents; more fail at once with ErrOverloaded (default 1,000).
	MaxPendingDials int
}

// Token admits agents presenting a bearer token.
type Token struct {
	Token string // the secret; only its digest is kept by the library
	Name  string // the identity it establishes
	// Allowed is what the agent may claim: "*" for anything, or identifiers
	// such as "host=node-a,ipv4=10.0.0.5,cidr=10.1.0.0/16,default-route=true".
	Allowed string
}

// AuthRequest is what an Authenticate function sees of a connecting agent.
type AuthRequest struct {
	AgentID     string // the agent's self-chosen id
	Identifiers string // what it claims to serve, comma-separated; may be empty
	Token       []byte // its bearer token, or nil
	Certificate []byte // its verified client certificate (DER), or nil
	RemoteAddr  string // its ip:port
}

// Identity is an Authenticate function's verdict on an accepted agent.
type Identity struct {
	Name string // who the agent is, for logs and policy
	// Allowed is what it may claim: "*" for anything, or identifiers.
	Allowed string
}

// Config configures a Server. Listen and a certificate (files or PEM) are
// required, as is at least one of Tokens, TokensFile, ClientCA* or Authenticate.
type Config struct {
	Listen string // UDP address agents connect to, e.g. "0.0.0.0:8443" (port 0: any free port)

	CertFile, KeyFile string // server certificate chain and key (PEM files), or:
	CertPEM, KeyPEM   []byte

	Tokens     []Token // bearer tokens accepted
	TokensFile string  // or a tokens file: "TOKEN IDENTITY [IDENTIFIERS|*]" per line, re-read on change

	// ClientCAFile / ClientCAPEM enable mutual TLS: agents with a client
	// certificate from these CAs are admitted with the names it carries.
	ClientCAFile string
	ClientCAPEM  []byte

	// Authenticate, if set, is asked about every agent the built-in methods
	// do not admit (for example to run a Kubernetes TokenReview). Returning
	// an error rejects the agent with the error's text. It runs on a library
	// thread and may block; it must not call back into this package's
	// blocking methods (dial, wait).
	Authenticate func(AuthRequest) (Identity, error)

	ServerID string // this replica's id (default "connector")
	// ServerCount is how many replicas run behind the address agents are
	// given (default 1). Agents keep connecting until they hold a session
	// with each, so every replica can dial through every agent.
	ServerCount     int
	ProxyStrategies string // e.g. "destHost,defaultRoute" (the default)
	// TCPListen is where the TCP fallback listener (for agents whose network
	// blocks UDP) listens: "" or "same" (Listen's IP and port), "off", or "IP:PORT".
	TCPListen string
	// Keepalive is how often a keepalive is sent on an idle agent connection
	// (0: 5s); IdleTimeout how long an agent may stay silent before it is
	// dropped (0: 30s; the smaller of the two ends' applies).
	Keepalive, IdleTimeout time.Duration
	Limits                 Limits
	WorkerThreads          int // runtime threads (0: one per CPU)
}

// Server is a running connector server: agents connect to it, and
// DialContext reaches addresses through them. It is safe for concurrent use.
type Server struct {
	h        *C.connector_server
	addr     string
	tcpAddr  string
	closed   atomic.Bool
	auth     cgo.Handle
	authSlot unsafe.Pointer // C memory holding auth, passed as the callback's user_data
	mu       sync.Mutex
	// freed is closed once Close has freed the C server (for a Close made
	// inside Authenticate, after Authenticate has returned).
	freed chan struct{}
}

// NewServer starts a server: it binds cfg.Listen and accepts agents in the
// background until Close.
func NewServer(cfg Config) (*Server, error) {
	var h *C.connector_server_config
	if err := call("new server", func(m **C.char) C.connector_result { return C.connector_server_config_new(&h, m) }); err != nil {
		return nil, err
	}
	defer C.connector_server_config_free(h, nil)
	s := &Server{freed: make(chan struct{})}
	set := func(what string, f func(m **C.char) C.connector_result) error { return call("new server: "+what, f) }
	strArg := func(what, v string, f func(p *C.char, m **C.char) C.connector_result) error {
		p := cString(v)
		defer freeString(p)
		return set(what, func(m **C.char) C.connector_result { return f(p, m) })
	}
	var err error
	if err == nil && cfg.Listen != "" {
		err = strArg("listen", cfg.Listen, func(p *C.char, m **C.char) C.connector_result {
			return C.connector_server_config_set_listen(h, p, m)
		})
	}
	if err == nil && cfg.CertFile != "" {
		c, k := cString(cfg.CertFile), cString(cfg.KeyFile)
		err = set("certificate", func(m **C.char) C.connector_result { return C.connector_server_config_set_identity_files(h, c, k, m) })
		freeString(c)
		freeString(k)
	}
	if err == nil && len(cfg.CertPEM) > 0 {
		c, cl := bytesArg(cfg.CertPEM)
		k, kl := bytesArg(cfg.KeyPEM)
		err = set("certificate", func(m **C.char) C.connector_result {
			return C.connector_server_config_set_identity_pem(h, c, cl, k, kl, m)
		})
		runtime.KeepAlive(cfg.CertPEM)
		runtime.KeepAlive(cfg.KeyPEM)
	}
	for _, t := range cfg.Tokens {
		if err != nil {
			break
		}
		tok := []byte(t.Token)
		tp, tl := bytesArg(tok)
		n, a := cString(t.Name), cString(t.Allowed)
		err = set("token "+t.Name, func(m **C.char) C.connector_result {
			return C.connector_server_config_add_token(h, tp, tl, n, a, m)
		})
		freeString(n)
		freeString(a)
		runtime.KeepAlive(tok)
	}
	if err == nil && cfg.TokensFile != "" {
		err = strArg("tokens file", cfg.TokensFile, func(p *C.char, m **C.char) C.connector_result {
			return C.connector_server_config_set_tokens_file(h, p, m)
		})
	}
	if err == nil && cfg.ClientCAFile != "" {
		err = strArg("client CA", cfg.ClientCAFile, func(p *C.char, m **C.char) C.connector_result {
			return C.connector_server_config_add_client_ca_file(h, p, m)
		})
	}
	if err == nil && len(cfg.ClientCAPEM) > 0 {
		p, l := bytesArg(cfg.ClientCAPEM)
		err = set("client CA", func(m **C.char) C.connector_result { return C.connector_server_config_add_client_ca_pem(h, p, l, m) })
		runtime.KeepAlive(cfg.ClientCAPEM)
	}
	if err == nil && cfg.ServerID != "" {
		err = strArg("server id", cfg.ServerID, func(p *C.char, m **C.char) C.connector_result {
			return C.connector_server_config_set_server_id(h, p, m)
		})
	}
	if err == nil && cfg.ServerCount != 0 {
		if cfg.ServerCount < 0 || cfg.ServerCount > 65535 {
			err = &Error{Op: "new server: server count", Code: CodeInvalidArgument, Message: fmt.Sprintf("server count %d is not 1 to 65535", cfg.ServerCount)}
		} else {
			err = set("server count", func(m **C.char) C.connector_result {
				return C.connector_server_config_set_server_count(h, C.uint16_t(cfg.ServerCount), m)
			})
		}
	}
	if err == nil && cfg.TCPListen != "" {
		err = strArg("TCP listen", cfg.TCPListen, func(p *C.char, m **C.char) C.connector_result {
			return C.connector_server_config_set_tcp_listen(h, p, m)
		})
	}
	if err == nil && (cfg.Keepalive > 0 || cfg.IdleTimeout > 0) {
		err = set("keepalive", func(m **C.char) C.connector_result {
			return C.connector_server_config_set_keepalive(h, millis(cfg.Keepalive), millis(cfg.IdleTimeout), m)
		})
	}
	if err == nil && cfg.ProxyStrategies != "" {
		err = strArg("proxy strategies", cfg.ProxyStrategies, func(p *C.char, m **C.char) C.connector_result {
			return C.connector_server_config_set_proxy_strategies(h, p, m)
		})
	}
	if err == nil {
		l := C.connector_limits{
			max_agents:            C.uint64_t(max(cfg.Limits.MaxAgents, 0)),
			max_streams_per_agent: C.uint32_t(max(cfg.Limits.MaxStreamsPerAgent, 0)),
			hello_timeout_ms:      C.uint64_t(max(cfg.Limits.HelloTimeout.Milliseconds(), 0)),
			dial_timeout_ms:       C.uint64_t(max(cfg.Limits.DialTimeout.Milliseconds(), 0)),
			max_pending_dials:     C.uint64_t(max(cfg.Limits.MaxPendingDials, 0)),
		}
		err = set("limits", func(m **C.char) C.connector_result { return C.connector_server_config_set_limits(h, &l, m) })
	}
	if err == nil && cfg.WorkerThreads > 0 {
		err = set("worker threads", func(m **C.char) C.connector_result {
			return C.connector_server_config_set_worker_threads(h, C.uint32_t(cfg.WorkerThreads), m)
		})
	}
	if err == nil && cfg.Authenticate != nil {
		s.auth = cgo.NewHandle(cfg.Authenticate)
		s.authSlot = C.malloc(C.size_t(unsafe.Sizeof(C.uintptr_t(0))))
		*(*C.uintptr_t)(s.authSlot) = C.uintptr_t(s.auth)
		err = set("authenticator", func(m **C.char) C.connector_result {
			return C.connector_server_config_set_authenticator(h, C.connector_auth_callback(C.goConnectorAuthenticate), s.authSlot, m)
		})
	}
	if err == nil {
		err = call("new server", func(m **C.char) C.connector_result { return C.connector_server_start(h, &s.h, m) })
	}
	if err == nil {
		var addr *C.char
		err = call("new server", func(m **C.char) C.connector_result { return C.connector_server_local_addr(s.h, &addr, m) })
		s.addr = takeString(addr)
	}
	if err == nil {
		var addr *C.char
		err = call("new server", func(m **C.char) C.connector_result { return C.connector_server_tcp_addr(s.h, &addr, m) })
		s.tcpAddr = takeString(addr)
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Addr is the UDP address agents connect to.
func (s *Server) Addr() string { return s.addr }

// TCPAddr is the TCP address of the fallback listener, or "" when it is off.
func (s *Server) TCPAddr() string { return s.tcpAddr }

// Close shuts the server down: agents are disconnected (their tunnelled
// connections end), frontends stop, and pending dials fail with ErrClosed.
// It waits for calls of Config.Authenticate in progress, so Authenticate
// must not wait for the goroutine calling Close. Called from inside
// Authenticate, it cannot wait for that very call: it returns at once and
// the server is freed on another goroutine once Authenticate has returned.
// It is safe to call more than once.
func (s *Server) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.h == nil {
		s.releaseAuth()
		close(s.freed)
		return nil
	}
	err := s.free()
	var e *Error
	if errors.As(err, &e) && e.Code == CodeWrongThread {
		// On a library thread: inside Authenticate. A new goroutine runs on
		// a thread of Go's, where the library waits for the callback.
		go func() {
			if s.free() == nil {
				s.releaseAuth()
				close(s.freed)
			}
		}()
		return nil
	}
	if err != nil {
		// The library may still call Authenticate: keep what it uses.
		return err
	}
	s.releaseAuth()
	close(s.freed)
	return nil
}

// Drain takes the server out of service gracefully, as `connector server`
// does on SIGTERM for a rolling update. At once, new dials (also through
// the frontends) fail with ErrClosed ("the server is shutting down"), new
// agents are refused, and every agent is told to go away (it connects to
// another replica). Connections already dialled keep working and may
// finish within grace; then the server closes what is still open, stops its
// frontends, and Drain waits (at most 3 s) for the closes to reach the
// agents. It returns as soon as every agent has acknowledged and every
// tunnelled connection has ended, and after at most grace plus 3 s. Close
// from another goroutine stops the drain at once (Drain then returns
// ErrClosed); after Drain the Server must still be closed.
func (s *Server) Drain(grace time.Duration) error {
	ms := C.uint64_t(max(grace, 0).Milliseconds())
	return callOn(&s.closed, "drain", "server", func(m **C.char) C.connector_result { return C.connector_server_drain(s.h, ms, m) })
}

// free frees the C server; once it succeeds, Authenticate is not running
// and is never called again.
func (s *Server) free() error {
	return call("close", func(m **C.char) C.connector_result { return C.connector_server_free(s.h, m) })
}

// releaseAuth frees what the library passes to Authenticate.
func (s *Server) releaseAuth() {
	if s.authSlot != nil {
		C.free(s.authSlot)
		s.authSlot = nil
		s.auth.Delete()
	}
}

// AgentCount is the number of connected agents.
func (s *Server) AgentCount() (int, error) {
	var n C.size_t
	err := callOn(&s.closed, "agent count", "server", func(m **C.char) C.connector_result { return C.connector_server_agent_count(s.h, &n, m) })
	return int(n), err
}

// WaitForAgent blocks until the agent agentID ("" for any agent) is
// connected, or ctx ends.
func (s *Server) WaitForAgent(ctx context.Context, agentID string) error {
	var id *C.char
	if agentID != "" {
		id = cString(agentID)
		defer freeString(id)
	}
	return blockingOn(ctx, &s.closed, "wait for agent", "server", func(timeout C.uint64_t, cancel *C.connector_cancel, m **C.char) C.connector_result {
		return C.connector_server_wait_agent(s.h, id, timeout, cancel, m)
	})
}

// blocking runs a blocking C call bounded by ctx: its deadline becomes the
// call's timeout and its cancellation fires the call's cancel handle from
// another goroutine, so no goroutine or thread is left behind.
func blocking(ctx context.Context, op string, f func(timeout C.uint64_t, cancel *C.connector_cancel, m **C.char) C.connector_result) error {
	if err := ctx.Err(); err != nil {
		return ctxError(op, err)
	}
	var timeout C.uint64_t
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return ctxError(op, context.DeadlineExceeded)
		}
		timeout = micros(left)
	}
	c, err := newCanceller()
	if err != nil {
		return err
	}
	defer c.free()
	stop := context.AfterFunc(ctx, c.fire)
	defer stop()
	err = call(op, func(m **C.char) C.connector_result { return f(timeout, c.h, m) })
	if e, ok := err.(*Error); ok {
		switch {
		case ctx.Err() != nil && (e.Code == CodeCancelled || e.Code == CodeTimedOut):
			// Whichever fired first (the cancel handle or the library's timer
			// set from ctx's deadline), ctx ended the call.
			e.cause = ctx.Err()
			if errors.Is(e.cause, context.DeadlineExceeded) {
				e.Code = CodeTimedOut
			}
		case e.Code == CodeTimedOut && timeout > 0:
			// The library's timer, set from ctx's deadline, fired first.
			e.cause = context.DeadlineExceeded
		}
	}
	return err
}

// blockingOn is blocking for a method of a Server or Agent (what names
// it), whose closed flag is closed: see guarded.
func blockingOn(ctx context.Context, closed *atomic.Bool, op, what string, f func(timeout C.uint64_t, cancel *C.connector_cancel, m **C.char) C.connector_result) error {
	return guarded(closed, op, what, func() error { return blocking(ctx, op, f) })
}

// ctxError is the error of a call ended by ctx: a passed deadline is a
// timeout (CodeTimedOut, os.IsTimeout), a cancellation CodeCancelled.
func ctxError(op string, err error) *Error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Op: op, Code: CodeTimedOut, Message: "context deadline exceeded", cause: err}
	}
	return &Error{Op: op, Code: CodeCancelled, Message: err.Error(), cause: err}
}

// DialContext connects to address ("host:port", as the agent's network
// sees it) through the agent that serves the host. It has the signature of
// net.Dialer.DialContext, so it can serve as http.Transport.DialContext or
// kube-apiserver's egress dialer. network must be "tcp", "tcp4" or "tcp6".
// ctx's deadline bounds the dial (choosing the agent, the agent's TCP
// connect), and cancelling ctx aborts it promptly.
func (s *Server) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return s.dial(ctx, network, address, C.CONNECTOR_SELECT_TARGET_HOST, "")
}

// Dialer dials through an explicitly chosen agent.
type Dialer struct {
	Server *Server
	// AgentID selects the agent with this id. If empty, Host selects the
	// agent serving that host name or address; if both are empty, any
	// connected agent is used.
	AgentID string
	Host    string
}

// DialContext is Server.DialContext through the Dialer's agent.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch {
	case d.AgentID != "":
		return d.Server.dial(ctx, network, address, C.CONNECTOR_SELECT_AGENT, d.AgentID)
	case d.Host != "":
		return d.Server.dial(ctx, network, address, C.CONNECTOR_SELECT_HOST, d.Host)
	default:
		return d.Server.dial(ctx, network, address, C.CONNECTOR_SELECT_ANY, "")
	}
}

// dial goes through the agent kind (a connector_selector_kind constant,
// passed as uint32_t like every enum of the C ABI) and selector pick.
func (s *Server) dial(ctx context.Context, network, address string, kind C.uint32_t, selector string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &Error{Op: "dial", Code: CodeInvalidArgument, Message: fmt.Sprintf("network %q: %v", network, ErrUnknownNetwork), cause: ErrUnknownNetwork}
	}
	if err := enter(&s.closed, "dial", "server"); err != nil {
		return nil, err
	}
	var sel *C.char
	if selector != "" {
		sel = cString(selector)
		defer freeString(sel)
	}
	target := cString(address)
	defer freeString(target)
	var fd C.int
	var h *C.connector_stream
	err := blocking(ctx, "dial "+address, func(timeout C.uint64_t, cancel *C.connector_cancel, m **C.char) C.connector_result {
		return C.connector_server_dial_fd(s.h, kind, sel, target, timeout, cancel, &fd, &h, m)
	})
	if err != nil {
		return nil, settle(&s.closed, "dial "+address, "server", err)
	}
	var agent *C.char
	C.connector_stream_agent_id(h, &agent, nil)
	agentID := takeString(agent)
	f := os.NewFile(uintptr(fd), "connector:"+address)
	nc, ferr := net.FileConn(f)
	f.Close()
	if ferr != nil {
		C.connector_stream_free(h, nil)
		return nil, &Error{Op: "dial " + address, Code: CodeIO, Message: ferr.Error(), cause: ferr}
	}
	return newConn(nc.(*net.UnixConn), h, agentID, address), nil
}

// Protocol is a frontend's protocol.
type Protocol int

const (
	// HTTPConnect serves HTTP CONNECT, as kube-apiserver's egress selector speaks it.
	HTTPConnect Protocol = iota
	// GRPC serves Konnectivity's gRPC ProxyService.
	GRPC
)

// FrontendTLS is the mutual-TLS material of a tls:// frontend (PEM files).
// Client certificates need EKU clientAuth. AllowedClients, if not empty, are
// the clients admitted: a certificate whose common name equals one, or one of
// whose DNS names equals one ignoring case. Without it any certificate
// ClientCAFile issued is admitted, and a ClientCAFile holding one of the
// server's agent client CAs is refused (ErrSetup): every agent could use the
// frontend. Give frontend clients their own CA, or list them.
type FrontendTLS struct {
	CertFile, KeyFile, ClientCAFile string
	AllowedClients                  []string
}

// FrontendLimits bounds a frontend; zero fields keep the defaults.
type FrontendLimits struct {
	MaxConnections int           // client connections at once; more are closed on arrival (default 10,000)
	HeadTimeout    time.Duration // time for the TLS handshake and request head (default 10s)
	MaxHead        int           // largest request head in bytes (default 8 KiB; CONNECT answers 431 beyond)
}

// StartFrontend serves protocol on bind: "unix:///path.sock" (owner-only),
// "tcp://127.0.0.1:PORT" (plain, loopback only) or "tls://IP:PORT" (then
// tls is required). limits may be nil (defaults). It returns where it
// listens and serves until Close.
func (s *Server) StartFrontend(protocol Protocol, bind string, tls *FrontendTLS, limits *FrontendLimits) (string, error) {
	b := cString(bind)
	defer freeString(b)
	var cert, key, ca, allowed *C.char
	if tls != nil {
		cert, key, ca = cString(tls.CertFile), cString(tls.KeyFile), cString(tls.ClientCAFile)
		defer freeString(cert)
		defer freeString(key)
		defer freeString(ca)
		if len(tls.AllowedClients) > 0 {
			allowed = cString(strings.Join(tls.AllowedClients, ","))
			defer freeString(allowed)
		}
	}
	p := C.uint32_t(C.CONNECTOR_FRONTEND_HTTP_CONNECT)
	if protocol == GRPC {
		p = C.CONNECTOR_FRONTEND_GRPC
	}
	var lim *C.connector_frontend_limits
	if limits != nil {
		lim = (*C.connector_frontend_limits)(C.malloc(C.size_t(unsafe.Sizeof(C.connector_frontend_limits{}))))
		defer C.free(unsafe.Pointer(lim))
		*lim = C.connector_frontend_limits{
			max_connections: C.uint64_t(max(limits.MaxConnections, 0)),
			head_timeout_ms: millis(limits.HeadTimeout),
			max_head:        C.uint64_t(max(limits.MaxHead, 0)),
		}
	}
	var out *C.char
	err := callOn(&s.closed, "start frontend", "server", func(m **C.char) C.connector_result {
		return C.connector_server_start_frontend(s.h, p, b, cert, key, ca, allowed, lim, &out, m)
	})
	return takeString(out), err
}

// StartForward binds listen ("IP:PORT", a loopback address: the forward
// authenticates nobody, so other addresses are refused) and tunnels each connection to
// target through agentID ("" for the agent serving target's host). It
// returns the bound address and serves until Close.
func (s *Server) StartForward(listen, agentID, target string) (string, error) {
	l, t := cString(listen), cString(target)
	defer freeString(l)
	defer freeString(t)
	var id *C.char
	if agentID != "" {
		id = cString(agentID)
		defer freeString(id)
	}
	var out *C.char
	err := callOn(&s.closed, "start forward", "server", func(m **C.char) C.connector_result {
		return C.connector_server_start_forward(s.h, l, id, t, &out, m)
	})
	return takeString(out), err
}
