// Package connector embeds a connector server (or agent) in a Go program
// through the library's C ABI.
//
// An agent inside a private network dials out over QUIC to a Server; the
// Server's DialContext then opens TCP connections to addresses as the
// agent's network sees them. DialContext has the signature of
// net.Dialer.DialContext, so it plugs into http.Transport or into
// kube-apiserver's egress dialer:
//
//	srv, err := connector.NewServer(connector.Config{
//		Listen:   "0.0.0.0:8443",
//		CertFile: "server.pem", KeyFile: "server-key.pem",
//		Tokens:   []connector.Token{{Token: secret, Name: "node-a", Allowed: "host=node-a"}},
//	})
//	client := &http.Client{Transport: &http.Transport{DialContext: srv.DialContext}}
//	resp, err := client.Get("http://node-a:10250/healthz")
//
// Connections are *Conn values implementing net.Conn with deadlines and
// CloseWrite. Failed calls return *Error values wrapping sentinels such as
// ErrNoAgent, ErrRefused or ErrClosed, for errors.Is.
//
// Building needs connector's C library installed with its pkg-config files
// (cgo links it through `pkg-config connector-static`). From a clone of the
// repository, with the module that uses this package next to it:
//
//	make -C ../connector install-ffi PREFIX=$HOME/.local
//	go mod edit -replace github.com/connector-project/connector/connector-ffi/go=../connector/connector-ffi/go && go mod tidy
//	PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig go build
//
// docs/ffi.md ("Using it") has the details.
package connector
