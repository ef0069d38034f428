package connector

/*
#include "connector.h"
*/
import "C"

// ThrowawayCertificates creates a fresh CA and a certificate it issued for
// names (comma-separated DNS names or IPs, e.g. "localhost,127.0.0.1"), as
// PEM. For tests and demos only: nothing revokes or rotates them.
func ThrowawayCertificates(names string) (caPEM, certPEM, keyPEM []byte, err error) {
	n := cString(names)
	defer freeString(n)
	var ca, cert, key *C.char
	err = call("throwaway certificates", func(m **C.char) C.connector_result {
		return C.connector_test_certificates(n, &ca, &cert, &key, m)
	})
	if err != nil {
		return nil, nil, nil, err
	}
	return []byte(takeString(ca)), []byte(takeString(cert)), []byte(takeString(key)), nil
}
