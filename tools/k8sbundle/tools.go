//go:build tools

// Keeps the kwok and helm commands in this module's dependency graph so that
// `go build sigs.k8s.io/kwok/cmd/kwok` and `go build helm.sh/helm/v3/cmd/helm`
// resolve against the same versions as the control plane.
package main

import (
	_ "helm.sh/helm/v3/cmd/helm"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
