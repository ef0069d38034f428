package connector

/*
// The installed library (`make install-ffi PREFIX=...`, see docs/ffi.md):
// its header, the static library and the system libraries it needs, so a
// program is one self-contained binary. PKG_CONFIG_PATH=PREFIX/lib/pkgconfig
// when PREFIX is not where pkg-config looks.
#cgo pkg-config: connector-static
#include <stdlib.h>
#include "connector.h"
*/
import "C"

import (
	"sync/atomic"
	"time"
	"unsafe"
)

// call runs one C entry point, which reports failures through the error
// out-parameter of that same call, and turns a failure into an *Error.
func call(op string, f func(msg **C.char) C.connector_result) error {
	var msg *C.char
	rc := f(&msg)
	if rc == C.CONNECTOR_OK {
		return nil
	}
	text := "unknown error"
	if msg != nil {
		text = C.GoString(msg)
		C.connector_string_free(msg)
	}
	return newError(op, Code(rc), text)
}

// callOn is call for a method of a Server or Agent (what names it), whose
// closed flag is closed: see guarded.
func callOn(closed *atomic.Bool, op, what string, f func(msg **C.char) C.connector_result) error {
	return guarded(closed, op, what, func() error { return call(op, f) })
}

// cString converts s for a call; the caller frees it with freeString.
func cString(s string) *C.char { return C.CString(s) }

func freeString(p *C.char) { C.free(unsafe.Pointer(p)) }

// takeString copies and frees a string the library handed out.
func takeString(p *C.char) string {
	if p == nil {
		return ""
	}
	defer C.connector_string_free(p)
	return C.GoString(p)
}

// bytesArg passes a Go byte slice as pointer and length. The slice must not
// contain Go pointers (byte slices never do).
func bytesArg(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// micros converts a timeout for the C API, where 0 means no limit.
func micros(d time.Duration) C.uint64_t {
	if d <= 0 {
		return 0
	}
	us := d.Microseconds()
	if us == 0 {
		us = 1
	}
	return C.uint64_t(us)
}

// millis converts a duration for the C API, where 0 means the default.
func millis(d time.Duration) C.uint64_t {
	if d <= 0 {
		return 0
	}
	return C.uint64_t(max(d.Milliseconds(), 1))
}

// canceller wraps a connector_cancel handle.
type canceller struct{ h *C.connector_cancel }

func newCanceller() (*canceller, error) {
	c := &canceller{}
	err := call("cancel", func(msg **C.char) C.connector_result { return C.connector_cancel_new(&c.h, msg) })
	return c, err
}

// fire is safe from any goroutine, also after free (then it is a no-op error).
func (c *canceller) fire() { C.connector_cancel_fire(c.h, nil) }

func (c *canceller) free() { C.connector_cancel_free(c.h, nil) }
