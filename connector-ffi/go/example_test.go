package connector_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"

	connector "github.com/connector-project/connector/connector-ffi/go"
)

// A server and an agent in one process; an HTTP request to a web server
// that only the agent's network can reach, through the server's DialContext.
func ExampleServer_DialContext() {
	ca, cert, key, _ := connector.ThrowawayCertificates("localhost")
	srv, err := connector.NewServer(connector.Config{
		Listen:  "127.0.0.1:0",
		CertPEM: cert, KeyPEM: key,
		Tokens: []connector.Token{{Token: "s3cret", Name: "node-a", Allowed: "host=node-a,cidr=127.0.0.0/8"}},
	})
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	agent, err := connector.NewAgent(connector.AgentConfig{
		Server: srv.Addr(), ServerName: "localhost", ServerCAPEM: ca,
		AgentID: "node-a", Token: "s3cret",
		Allow: []string{"127.0.0.1/32"}, // loopback is off limits unless allowed
	})
	if err != nil {
		panic(err)
	}
	defer agent.Close()
	if err := agent.WaitConnected(context.Background()); err != nil {
		panic(err)
	}

	// The web server "behind" the agent.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from behind the agent")
	}))
	defer ln.Close()

	// Route by agent id: the target is 127.0.0.1, which node-a serves.
	dialer := &connector.Dialer{Server: srv, AgentID: "node-a"}
	transport := &http.Transport{DialContext: dialer.DialContext}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	resp, err := client.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status, string(body))
	// Output: 200 OK hello from behind the agent
}
