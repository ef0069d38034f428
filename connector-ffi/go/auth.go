package connector

/*
#include "connector.h"
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

//export goConnectorAuthenticate
func goConnectorAuthenticate(userData unsafe.Pointer, req *C.connector_auth_request, decision *C.connector_auth_decision) {
	reject := func(reason string) {
		r := cString(reason)
		defer freeString(r)
		C.connector_auth_reject(decision, r, nil)
	}
	defer func() {
		// A panicking verifier must not take the process down with it.
		if p := recover(); p != nil {
			reject("the authenticator failed")
		}
	}()
	h := cgo.Handle(*(*C.uintptr_t)(userData))
	authenticate := h.Value().(func(AuthRequest) (Identity, error))
	r := AuthRequest{
		AgentID:     C.GoString(req.agent_id),
		Identifiers: C.GoString(req.identifiers),
		RemoteAddr:  C.GoString(req.remote_addr),
	}
	if req.token != nil {
		r.Token = C.GoBytes(unsafe.Pointer(req.token), C.int(req.token_len))
	}
	if req.certificate != nil {
		r.Certificate = C.GoBytes(unsafe.Pointer(req.certificate), C.int(req.certificate_len))
	}
	id, err := authenticate(r)
	if err != nil {
		reject(err.Error())
		return
	}
	name, allowed := cString(id.Name), cString(id.Allowed)
	defer freeString(name)
	defer freeString(allowed)
	var msg *C.char
	if C.connector_auth_accept(decision, name, allowed, &msg) != C.CONNECTOR_OK {
		reason := "the authenticator's identity is invalid: " + takeString(msg)
		reject(reason)
	}
}
