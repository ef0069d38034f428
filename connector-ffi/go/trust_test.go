package connector

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A tls:// frontend whose client CA is the agents' client CA admits every
// agent's certificate, so it is refused unless AllowedClients lists the
// clients it admits; a client not on the list is refused in the handshake.
func TestTLSFrontendAdmitsOnlyItsClients(t *testing.T) {
	ca, cert, key, err := ThrowawayCertificates("localhost")
	if err != nil {
		t.Fatal(err)
	}
	// One CA for agents' client certificates, and the agent node-m's certificate.
	agentsCA, agentCert, agentKey, err := ThrowawayCertificates("node-m")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Config{Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, ClientCAPEM: agentsCA, WorkerThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	shared := &FrontendTLS{CertFile: file("cert.pem", cert), KeyFile: file("key.pem", key), ClientCAFile: file("agents-ca.pem", agentsCA)}
	if _, err := srv.StartFrontend(HTTPConnect, "tls://127.0.0.1:0", shared, nil); !errors.Is(err, ErrSetup) || !strings.Contains(err.Error(), "own CA") {
		t.Fatalf("a frontend trusting the agents' CA without a list: %v", err)
	}

	// The agent's certificate (common name node-m) presented to the frontend.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	pair, err := tls.X509KeyPair(agentCert, agentKey)
	if err != nil {
		t.Fatal(err)
	}
	admitted := func(where string) bool {
		conn, err := tls.Dial("tcp", strings.TrimPrefix(where, "tls://"), &tls.Config{
			RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{pair},
		})
		if err != nil {
			return false
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write([]byte("CONNECT node-x:10250 HTTP/1.1\r\nHost: x\r\n\r\n"))
		line, err := bufio.NewReader(conn).ReadString('\n')
		return err == nil && strings.HasPrefix(line, "HTTP/1.1 ")
	}
	for _, c := range []struct {
		allowed []string
		admit   bool
	}{{[]string{"kube-apiserver"}, false}, {[]string{"kube-apiserver", "node-m"}, true}} {
		listed := *shared
		listed.AllowedClients = c.allowed
		where, err := srv.StartFrontend(HTTPConnect, "tls://127.0.0.1:0", &listed, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := admitted(where); got != c.admit {
			t.Fatalf("allowed %v: node-m admitted = %v", c.allowed, got)
		}
	}
}

// An identity name from the Go (C) authenticator goes through the same rule
// as tokens and certificates: no '/', which would let it own another
// identity's NAME/INSTANCE agent ids, and no control characters.
func TestCallbackIdentityNamesCannotHoldASlash(t *testing.T) {
	ca, cert, key, err := ThrowawayCertificates("localhost")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Config{
		Listen: "127.0.0.1:0", CertPEM: cert, KeyPEM: key, WorkerThreads: 1,
		Authenticate: func(r AuthRequest) (Identity, error) {
			return Identity{Name: string(r.Token), Allowed: "cidr=127.0.0.0/8"}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, name := range []string{"team/victim", "bell\x07"} {
		bad := startAgent(t, srv, ca, "team-victim", name)
		err := bad.WaitConnected(context.Background())
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "identity name") {
			t.Fatalf("identity %q: %v", name, err)
		}
	}
	good := startAgent(t, srv, ca, "team", "team")
	if err := good.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
}
