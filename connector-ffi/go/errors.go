package connector

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// Code is the C ABI's result code carried by an *Error.
type Code int

// Result codes (the C header's connector_result values).
const (
	CodeInvalidArgument Code = 1
	CodeInvalidHandle   Code = 2
	CodeTimedOut        Code = 3
	CodeCancelled       Code = 4
	CodeClosed          Code = 5
	CodeNoAgent         Code = 6
	CodeRefused         Code = 7
	CodeUnreachable     Code = 8
	CodeDNS             Code = 9
	CodeDenied          Code = 10
	CodeOverloaded      Code = 11
	CodeInvalidTarget   Code = 12
	CodeInternal        Code = 13
	CodeIO              Code = 14
	CodeSetup           Code = 15
	CodeRejected        Code = 16
	CodePanic           Code = 17
	CodeWrongThread     Code = 18
)

// Sentinel errors. Every error this package returns for a failed call is
// an *Error that wraps one of these, so callers test with errors.Is.
var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrInvalidHandle   = errors.New("invalid handle")
	// ErrTimeout: a dial did not complete in time. Dial errors caused by the
	// context's deadline also match context.DeadlineExceeded.
	ErrTimeout   = errors.New("timed out")
	ErrCancelled = errors.New("cancelled")
	// ErrClosed is net.ErrClosed: the Server, Agent or Conn was closed.
	ErrClosed         = net.ErrClosed
	ErrNoAgent        = errors.New("no connected agent for the target")
	ErrRefused        = errors.New("connection refused by the target")
	ErrUnreachable    = errors.New("target unreachable")
	ErrDNS            = errors.New("host name did not resolve")
	ErrDenied         = errors.New("denied by the agent's destination policy")
	ErrOverloaded     = errors.New("overloaded")
	ErrInvalidTarget  = errors.New("invalid target")
	ErrInternal       = errors.New("internal error")
	ErrIO             = errors.New("i/o error")
	ErrSetup          = errors.New("setup failed")
	ErrRejected       = errors.New("rejected by the server")
	ErrPanic          = errors.New("panic inside the connector library")
	ErrWrongThread    = errors.New("blocking call on a library thread")
	ErrUnknownNetwork = errors.New("unsupported network (use tcp, tcp4 or tcp6)")
)

var sentinels = map[Code]error{
	CodeInvalidArgument: ErrInvalidArgument,
	CodeInvalidHandle:   ErrInvalidHandle,
	CodeTimedOut:        ErrTimeout,
	CodeCancelled:       ErrCancelled,
	CodeClosed:          ErrClosed,
	CodeNoAgent:         ErrNoAgent,
	CodeRefused:         ErrRefused,
	CodeUnreachable:     ErrUnreachable,
	CodeDNS:             ErrDNS,
	CodeDenied:          ErrDenied,
	CodeOverloaded:      ErrOverloaded,
	CodeInvalidTarget:   ErrInvalidTarget,
	CodeInternal:        ErrInternal,
	CodeIO:              ErrIO,
	CodeSetup:           ErrSetup,
	CodeRejected:        ErrRejected,
	CodePanic:           ErrPanic,
	CodeWrongThread:     ErrWrongThread,
}

// Error is a failed call: the operation, the library's result code and
// message, and optionally a cause (such as the context's error).
type Error struct {
	Op      string // "dial", "new server", ...
	Code    Code
	Message string
	cause   error
}

func newError(op string, code Code, message string) *Error {
	return &Error{Op: op, Code: code, Message: message}
}

// Error returns "connector: OP: MESSAGE".
func (e *Error) Error() string {
	return fmt.Sprintf("connector: %s: %s", e.Op, e.Message)
}

// Unwrap returns the sentinel for the code, and the cause if any.
func (e *Error) Unwrap() []error {
	errs := []error{}
	if s, ok := sentinels[e.Code]; ok {
		errs = append(errs, s)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// Timeout reports whether the call failed because time ran out (net.Error).
func (e *Error) Timeout() bool { return e.Code == CodeTimedOut }

// Temporary reports whether retrying may help (net.Error; deprecated there).
func (e *Error) Temporary() bool {
	return e.Code == CodeTimedOut || e.Code == CodeOverloaded || e.Code == CodeNoAgent
}

// afterClosedCheck, when set, runs right after a Server or Agent method
// passed its closed check (tests close the object in that window).
var afterClosedCheck atomic.Pointer[func()]

// enter fails with ErrClosed once closed is set; what names the object.
func enter(closed *atomic.Bool, op, what string) error {
	if closed.Load() {
		return newError(op, CodeClosed, what+" closed")
	}
	if hook := afterClosedCheck.Load(); hook != nil {
		(*hook)()
	}
	return nil
}

// guarded runs one call on a Server or Agent: enter, then the call, then
// settle, with the same op for both.
func guarded(closed *atomic.Bool, op, what string, run func() error) error {
	if err := enter(closed, op, what); err != nil {
		return err
	}
	return settle(closed, op, what, run())
}

// settle reports a call that raced Close as ErrClosed: Close freed the
// handle after the call's closed check, so the library answered
// CodeInvalidHandle (or CodeClosed, which already matches ErrClosed).
func settle(closed *atomic.Bool, op, what string, err error) error {
	var e *Error
	if errors.As(err, &e) && e.Code == CodeInvalidHandle && closed.Load() {
		return newError(op, CodeClosed, what+" closed")
	}
	return err
}
