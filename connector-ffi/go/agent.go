package connector

/*
#include "connector.h"
*/
import "C"

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
)

// AgentConfig configures an Agent. Server, a server CA, AgentID and a
// credential (Token, TokenFile or a client certificate) are required.
type AgentConfig struct {
	Server string // the server's "host:port"
	// Servers lists further server addresses: with several, each is one
	// replica and the agent holds a session with every one.
	Servers    []string
	ServerName string // name on the server certificate (default: Server's host)

	ServerCAFile string // CAs the server certificate must chain to (PEM)
	ServerCAPEM  []byte

	AgentID   string // this agent's id (often the node name)
	Token     string // bearer token, or:
	TokenFile string // a file holding it, re-read at each connection attempt

	CertFile, KeyFile string // client certificate for mTLS (PEM files), or:
	CertPEM, KeyPEM   []byte

	// Identifiers is what the agent claims to serve, e.g.
	// "host=node-a,ipv4=10.0.0.5,default-route=true".
	Identifiers string
	// Allow lists the destinations the agent may connect to ("10.0.0.0/8",
	// "127.0.0.1/32", "*.svc.cluster.local:443"). Empty: anything outside
	// the guarded ranges (loopback, link-local, metadata services).
	Allow []string

	MaxConnections int // tunnelled connections served at once (0: default 10,000)
	WorkerThreads  int // runtime threads (0: one per CPU)
	// TunnelIdleTimeout closes a tunnelled connection idle this long in
	// both directions (0: never); a Conn then fails with ErrTimeout.
	TunnelIdleTimeout time.Duration
	// TunnelStallTimeout closes a tunnelled connection one side of which
	// has read none of the bytes waiting for it this long (0: the default,
	// 3 minutes; negative: never); a Conn then fails with ErrIO.
	TunnelStallTimeout time.Duration
	// Keepalive is how often a keepalive is sent on an idle connection to
	// the server (0: 5s); IdleTimeout how long without an answer the server
	// counts as gone (0: 30s; the smaller of the two ends' applies).
	Keepalive, IdleTimeout time.Duration
	// Transport is "auto" (the default: QUIC, falling back to TCP when UDP
	// does not get through), "quic" or "tcp".
	Transport string
	// TCPServer is the server's TCP fallback address (default: Server; only
	// with a single server address).
	TCPServer string
}

// Agent is a running agent: it keeps a connection to its server and
// serves the server's dials, reconnecting with backoff, until Close.
type Agent struct {
	h      *C.connector_agent
	closed atomic.Bool
}

// NewAgent starts an agent; it connects in the background (see WaitConnected).
func NewAgent(cfg AgentConfig) (*Agent, error) {
	var h *C.connector_agent_config
	if err := call("new agent", func(m **C.char) C.connector_result { return C.connector_agent_config_new(&h, m) }); err != nil {
		return nil, err
	}
	defer C.connector_agent_config_free(h, nil)
	set := func(what string, f func(m **C.char) C.connector_result) error { return call("new agent: "+what, f) }
	str := func(what, v string, f func(p *C.char, m **C.char) C.connector_result) error {
		if v == "" {
			return nil
		}
		p := cString(v)
		defer freeString(p)
		return set(what, func(m **C.char) C.connector_result { return f(p, m) })
	}
	strs := func(what string, vs []string, f func(p *C.char, m **C.char) C.connector_result) error {
		for _, v := range vs {
			if err := str(what, v, f); err != nil {
				return err
			}
		}
		return nil
	}
	steps := []func() error{
		func() error {
			return str("server", cfg.Server, func(p *C.char, m **C.char) C.connector_result { return C.connector_agent_config_set_server(h, p, m) })
		},
		func() error {
			return strs("server", cfg.Servers, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_add_server(h, p, m)
			})
		},
		func() error {
			if cfg.TunnelIdleTimeout <= 0 {
				return nil
			}
			return set("tunnel idle timeout", func(m **C.char) C.connector_result {
				return C.connector_agent_config_set_tunnel_idle_timeout(h, millis(cfg.TunnelIdleTimeout), m)
			})
		},
		func() error {
			if cfg.TunnelStallTimeout == 0 {
				return nil
			}
			return set("tunnel stall timeout", func(m **C.char) C.connector_result {
				return C.connector_agent_config_set_tunnel_stall_timeout(h, millis(cfg.TunnelStallTimeout), m)
			})
		},
		func() error {
			if cfg.Keepalive <= 0 && cfg.IdleTimeout <= 0 {
				return nil
			}
			return set("keepalive", func(m **C.char) C.connector_result {
				return C.connector_agent_config_set_keepalive(h, millis(cfg.Keepalive), millis(cfg.IdleTimeout), m)
			})
		},
		func() error {
			return str("transport", cfg.Transport, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_set_transport(h, p, m)
			})
		},
		func() error {
			return str("TCP server", cfg.TCPServer, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_set_tcp_server(h, p, m)
			})
		},
		func() error {
			return str("server name", cfg.ServerName, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_set_server_name(h, p, m)
			})
		},
		func() error {
			return str("server CA", cfg.ServerCAFile, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_add_server_ca_file(h, p, m)
			})
		},
		func() error {
			if len(cfg.ServerCAPEM) == 0 {
				return nil
			}
			p, l := bytesArg(cfg.ServerCAPEM)
			defer runtime.KeepAlive(cfg.ServerCAPEM)
			return set("server CA", func(m **C.char) C.connector_result { return C.connector_agent_config_add_server_ca_pem(h, p, l, m) })
		},
		func() error {
			return str("agent id", cfg.AgentID, func(p *C.char, m **C.char) C.connector_result { return C.connector_agent_config_set_agent_id(h, p, m) })
		},
		func() error {
			if cfg.Token == "" {
				return nil
			}
			tok := []byte(cfg.Token)
			p, l := bytesArg(tok)
			defer runtime.KeepAlive(tok)
			return set("token", func(m **C.char) C.connector_result { return C.connector_agent_config_set_token(h, p, l, m) })
		},
		func() error {
			return str("token file", cfg.TokenFile, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_set_token_file(h, p, m)
			})
		},
		func() error {
			if cfg.CertFile == "" {
				return nil
			}
			c, k := cString(cfg.CertFile), cString(cfg.KeyFile)
			defer freeString(c)
			defer freeString(k)
			return set("client certificate", func(m **C.char) C.connector_result {
				return C.connector_agent_config_set_client_identity_files(h, c, k, m)
			})
		},
		func() error {
			if len(cfg.CertPEM) == 0 {
				return nil
			}
			c, cl := bytesArg(cfg.CertPEM)
			k, kl := bytesArg(cfg.KeyPEM)
			defer runtime.KeepAlive(cfg.CertPEM)
			defer runtime.KeepAlive(cfg.KeyPEM)
			return set("client certificate", func(m **C.char) C.connector_result {
				return C.connector_agent_config_set_client_identity_pem(h, c, cl, k, kl, m)
			})
		},
		func() error {
			return str("identifiers", cfg.Identifiers, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_set_identifiers(h, p, m)
			})
		},
		func() error {
			return strs("allow rule", cfg.Allow, func(p *C.char, m **C.char) C.connector_result {
				return C.connector_agent_config_add_allow_rule(h, p, m)
			})
		},
		func() error {
			if cfg.MaxConnections <= 0 {
				return nil
			}
			return set("max connections", func(m **C.char) C.connector_result {
				return C.connector_agent_config_set_max_connections(h, C.uint32_t(cfg.MaxConnections), m)
			})
		},
		func() error {
			if cfg.WorkerThreads <= 0 {
				return nil
			}
			return set("worker threads", func(m **C.char) C.connector_result {
				return C.connector_agent_config_set_worker_threads(h, C.uint32_t(cfg.WorkerThreads), m)
			})
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	a := &Agent{}
	if err := call("new agent", func(m **C.char) C.connector_result { return C.connector_agent_start(h, &a.h, m) }); err != nil {
		return nil, err
	}
	return a, nil
}

// WaitConnected blocks until the agent is registered with its server, the
// server refuses it (an error matching ErrRejected; the agent keeps
// retrying), or ctx ends.
func (a *Agent) WaitConnected(ctx context.Context) error {
	return blockingOn(ctx, &a.closed, "wait connected", "agent", func(timeout C.uint64_t, cancel *C.connector_cancel, m **C.char) C.connector_result {
		return C.connector_agent_wait_connected(a.h, timeout, cancel, m)
	})
}

// Session is a server replica the agent holds a session with.
type Session struct {
	ServerID  string // the replica's id
	Transport string // "quic" or "tcp"
}

// Sessions lists the server replicas the agent holds a session with, and
// how many it should hold (the number of server addresses, or the replica
// count the servers announce).
func (a *Agent) Sessions() (held []Session, expected int, err error) {
	var out *C.char
	var n C.size_t
	err = callOn(&a.closed, "sessions", "agent", func(m **C.char) C.connector_result {
		return C.connector_agent_sessions(a.h, &out, &n, m)
	})
	for line := range strings.SplitSeq(takeString(out), "\n") {
		if id, transport, ok := strings.Cut(line, " "); ok {
			held = append(held, Session{ServerID: id, Transport: transport})
		}
	}
	return held, int(n), err
}

// WaitSessions blocks until the agent holds sessions with at least n
// server replicas, or ctx ends.
func (a *Agent) WaitSessions(ctx context.Context, n int) error {
	return blockingOn(ctx, &a.closed, "wait sessions", "agent", func(timeout C.uint64_t, cancel *C.connector_cancel, m **C.char) C.connector_result {
		return C.connector_agent_wait_sessions(a.h, C.size_t(max(n, 0)), timeout, cancel, m)
	})
}

// Metrics is the agent's metrics page in the Prometheus text format (the
// connector_agent_* series `connector agent --admin` serves at /metrics).
func (a *Agent) Metrics() (string, error) {
	var out *C.char
	err := callOn(&a.closed, "metrics", "agent", func(m **C.char) C.connector_result { return C.connector_agent_metrics(a.h, &out, m) })
	return takeString(out), err
}

// Status describes where the agent stands: "connecting", "connected to
// SERVER-ID", "rejected: ...", "disconnected: ..." or "stopped".
func (a *Agent) Status() string {
	if a.closed.Load() {
		return "stopped"
	}
	var out *C.char
	if call("status", func(m **C.char) C.connector_result { return C.connector_agent_status(a.h, &out, m) }) != nil {
		return "stopped"
	}
	return takeString(out)
}

// Close stops the agent: its connection closes, ending its tunnelled
// connections. It is safe to call more than once.
func (a *Agent) Close() error {
	if a.closed.Swap(true) {
		return nil
	}
	C.connector_agent_free(a.h, nil)
	return nil
}
