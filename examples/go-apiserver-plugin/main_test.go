package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestDemo runs the whole demo: server, agent and service in one process,
// a streamed log and a WebSocket exec session through the tunnel.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if err := runDemo(context.Background(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	text := out.String()
	t.Log("\n" + text)
	for _, want := range []string{
		"through agent node-a",
		"logs -f: web-0/app: log line 1\n",
		"logs -f: web-0/app: log line 3\n",
		`exec: got "exec: uname"`,
		`exec: got "exec: id"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
