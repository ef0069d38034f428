module github.com/connector-project/connector/examples/go-apiserver-plugin

go 1.26.0

require (
	github.com/connector-project/connector/connector-ffi/go v0.0.0
	golang.org/x/net v0.62.0
)

replace github.com/connector-project/connector/connector-ffi/go => ../../connector-ffi/go
