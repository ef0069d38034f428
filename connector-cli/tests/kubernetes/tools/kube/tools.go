//go:build tools

// Package tools pins the Kubernetes commands the end-to-end suite builds
// (see ../../build.sh); it is never compiled itself.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
