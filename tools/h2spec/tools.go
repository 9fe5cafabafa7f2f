//go:build tools

// Package h2spec pins the HTTP/2 conformance suite that tests the sidecar's gRPC server
// (tests/integration/sidecar/test_sidecar_h2spec.py builds it from this module's go.sum).
package h2spec

import _ "github.com/summerwind/h2spec/cmd/h2spec"
