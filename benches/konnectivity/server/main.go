// konnectivity-server as sigs.k8s.io/apiserver-network-proxy v0.34.0 builds it
// (cmd/server/main.go; Copyright 2019 The Kubernetes Authors, Apache License 2.0),
// logging at verbosity 0 by default: see package quiet.
package main

import (
	"sigs.k8s.io/apiserver-network-proxy/cmd/server/app"
	"sigs.k8s.io/apiserver-network-proxy/cmd/server/app/options"

	"connector/benches/konnectivity/internal/quiet"
)

func main() {
	o := options.NewProxyRunOptions()
	quiet.Main(app.NewProxyCommand(&app.Proxy{}, o), o.Flags())
}
