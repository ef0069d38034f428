package main

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/websocket"
)

// kubeletStandIn serves what the apiserver asks of a kubelet in this demo:
//
//   - GET /containerLogs/{ns}/{pod}/{container}?follow=true streams log
//     lines, one every interval, until the client goes away (kubectl logs -f);
//   - GET /exec/{ns}/{pod}/{container} upgrades to a WebSocket and answers
//     each message with "exec: " + message (kubectl exec).
func kubeletStandIn(interval time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", func(w http.ResponseWriter, r *http.Request) {
		follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
		w.Header().Set("Content-Type", "text/plain")
		flusher, _ := w.(http.Flusher)
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for i := 1; ; i++ {
			fmt.Fprintf(w, "%s/%s: log line %d\n", r.PathValue("pod"), r.PathValue("container"), i)
			if flusher != nil {
				flusher.Flush()
			}
			if !follow && i == 3 {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-ticker.C:
			}
		}
	})
	exec := websocket.Server{Handler: func(ws *websocket.Conn) {
		defer ws.Close()
		for {
			var msg string
			if err := websocket.Message.Receive(ws, &msg); err != nil {
				if err != io.EOF {
					return
				}
				return
			}
			if err := websocket.Message.Send(ws, "exec: "+msg); err != nil {
				return
			}
		}
	}}
	mux.Handle("GET /exec/{ns}/{pod}/{container}", exec)
	return mux
}
