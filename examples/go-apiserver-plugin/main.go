// Command go-apiserver-plugin embeds a connector server in a Go program the
// way a kube-apiserver plugin would, and reaches a kubelet-like service in
// an agent's network through the server's DialContext: a streaming GET (like
// `kubectl logs -f`) and a WebSocket upgrade (like `kubectl exec`).
//
//	go run .                 # demo: server, agent and service in one process
//	go run . server -h       # the server side alone, for a separately run agent
//	go run . service -h      # the kubelet stand-in alone, to run behind an agent
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	connector "github.com/connector-project/connector/connector-ffi/go"
)

func main() {
	log.SetFlags(0)
	mode := "demo"
	args := os.Args[1:]
	if len(args) > 0 {
		mode, args = args[0], args[1:]
	}
	ctx := context.Background()
	var err error
	switch mode {
	case "demo":
		err = runDemo(ctx, os.Stdout)
	case "server":
		err = runServer(ctx, args, os.Stdout)
	case "service":
		err = runService(args)
	default:
		err = fmt.Errorf("unknown mode %q (demo, server, service)", mode)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// apiserverClient is the http.Client an apiserver would use to reach
// kubelets: every connection is dialled through the connector server, by
// srvDial (Server.DialContext routes by the target's host; a Dialer picks
// an agent explicitly).
func apiserverClient(srvDial func(ctx context.Context, network, address string) (net.Conn, error), out io.Writer) *http.Client {
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		conn, err := srvDial(ctx, network, address)
		if err == nil {
			fmt.Fprintf(out, "dialled %s through agent %s\n", address, conn.(*connector.Conn).AgentID())
		}
		return conn, err
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial}}
}

// exercise runs the two kubectl-like calls against the service at target.
func exercise(ctx context.Context, client *http.Client, target string, out io.Writer) error {
	lines, err := streamLogs(ctx, client, "http://"+target+"/containerLogs/default/web-0/app?follow=true", 3)
	if err != nil {
		return fmt.Errorf("logs -f: %w", err)
	}
	for _, line := range lines {
		fmt.Fprintf(out, "logs -f: %s\n", line)
	}
	answers, err := execSession(ctx, client, "http://"+target+"/exec/default/web-0/app", "http://"+target, []string{"uname", "id"})
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	for _, a := range answers {
		fmt.Fprintf(out, "exec: got %q\n", a)
	}
	return nil
}

// runDemo starts a server, an agent that may reach only 127.0.0.1, and the
// kubelet stand-in on 127.0.0.1, then reaches the stand-in through the tunnel.
func runDemo(ctx context.Context, out io.Writer) error {
	ca, cert, key, err := connector.ThrowawayCertificates("localhost")
	if err != nil {
		return err
	}
	srv, err := connector.NewServer(connector.Config{
		Listen:  "127.0.0.1:0",
		CertPEM: cert, KeyPEM: key,
		Tokens: []connector.Token{{Token: "node-a-token", Name: "node-a", Allowed: "host=node-a,cidr=127.0.0.0/8"}},
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(out, "server listening on %s (QUIC)\n", srv.Addr())

	service, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	web := &http.Server{Handler: kubeletStandIn(50 * time.Millisecond)}
	go web.Serve(service)
	defer web.Close()

	agent, err := connector.NewAgent(connector.AgentConfig{
		Server: srv.Addr(), ServerName: "localhost", ServerCAPEM: ca,
		AgentID: "node-a", Token: "node-a-token",
		Identifiers: "host=node-a,ipv4=127.0.0.1",
		Allow:       []string{service.Addr().String()}, // exactly the service, nothing else
	})
	if err != nil {
		return err
	}
	defer agent.Close()
	if err := agent.WaitConnected(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "agent node-a %s\n", agent.Status())
	client := apiserverClient(srv.DialContext, out) // 127.0.0.1 is served by node-a
	defer client.CloseIdleConnections()
	return exercise(ctx, client, service.Addr().String(), out)
}

// runServer is the server side alone: it waits for an agent and reaches
// -target through it.
func runServer(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "UDP address agents connect to")
	certFile := fs.String("cert", "pki/server.pem", "server certificate chain (PEM)")
	keyFile := fs.String("key", "pki/server-key.pem", "server key (PEM)")
	tokens := fs.String("tokens", "pki/tokens", "tokens file (TOKEN IDENTITY [IDENTIFIERS|*] per line)")
	agentID := fs.String("agent-id", "node-a", "the agent to wait for and dial through")
	target := fs.String("target", "", "host:port of the service in the agent's network (required)")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for the agent")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("-target is required")
	}
	srv, err := connector.NewServer(connector.Config{Listen: *listen, CertFile: *certFile, KeyFile: *keyFile, TokensFile: *tokens})
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(out, "server listening on %s (QUIC); waiting for an agent\n", srv.Addr())
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	if err := srv.WaitForAgent(wctx, *agentID); err != nil {
		return err
	}
	dialer := &connector.Dialer{Server: srv, AgentID: *agentID}
	client := apiserverClient(dialer.DialContext, out)
	defer client.CloseIdleConnections()
	return exercise(ctx, client, *target, out)
}

// runService serves the kubelet stand-in, to be run where only the agent reaches it.
func runService(args []string) error {
	fs := flag.NewFlagSet("service", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:10250", "address to serve on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log.Printf("kubelet stand-in on %s", *listen)
	return http.ListenAndServe(*listen, kubeletStandIn(time.Second))
}
