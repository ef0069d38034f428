package connector

/*
#include "connector.h"
*/
import "C"

import (
	"runtime"
	"time"
	"unsafe"
)

// This file holds what the boundary-cost measurement in measure_test.go
// needs beyond the public API: the blocking-call stream (the alternative
// to the socketpair design) and the library's own Rust-only round trip.

// rawStream is a tunnelled connection used through the C ABI's blocking
// read and write calls instead of a socketpair.
type rawStream struct{ h *C.connector_stream }

func (s *Server) dialRaw(address string) (*rawStream, error) {
	t := cString(address)
	defer freeString(t)
	r := &rawStream{}
	err := call("dial "+address, func(m **C.char) C.connector_result {
		return C.connector_server_dial(s.h, C.CONNECTOR_SELECT_TARGET_HOST, nil, t, 0, nil, &r.h, m)
	})
	return r, err
}

func (r *rawStream) Write(b []byte) (int, error) {
	var n C.size_t
	p, l := bytesArg(b)
	err := call("write", func(m **C.char) C.connector_result {
		return C.connector_stream_write(r.h, p, l, 0, nil, &n, m)
	})
	runtime.KeepAlive(b)
	return int(n), err
}

func (r *rawStream) Read(b []byte) (int, error) {
	var n C.size_t
	err := call("read", func(m **C.char) C.connector_result {
		return C.connector_stream_read(r.h, (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b)), 0, nil, &n, m)
	})
	runtime.KeepAlive(b)
	return int(n), err
}

func (r *rawStream) Close() { C.connector_stream_free(r.h, nil) }

// rustRoundTrip is the mean time of one round trip made by Rust code on
// the library's runtime, with no boundary crossing per message.
func (s *Server) rustRoundTrip(address string, iterations, size int) (time.Duration, error) {
	t := cString(address)
	defer freeString(t)
	var ns C.uint64_t
	err := call("bench", func(m **C.char) C.connector_result {
		return C.connector_bench_round_trip(s.h, t, C.uint32_t(iterations), C.uint32_t(size), &ns, m)
	})
	return time.Duration(ns), err
}
