package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// streamLogs makes a streaming GET like `kubectl logs -f` and returns the
// first n lines as they arrive, then hangs up (the stream would go on).
func streamLogs(ctx context.Context, client *http.Client, url string, n int) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("logs: %s", resp.Status)
	}
	var lines []string
	scanner := bufio.NewScanner(resp.Body)
	for len(lines) < n && scanner.Scan() {
		lines = append(lines, scanner.Text())
	}
	if len(lines) < n {
		return lines, fmt.Errorf("logs ended after %d lines: %v", len(lines), scanner.Err())
	}
	return lines, nil
}

// execSession upgrades to a WebSocket like `kubectl exec` (through the same
// http.Client, so through the tunnel), sends each command and collects the
// answers.
func execSession(ctx context.Context, client *http.Client, url, origin string, commands []string) ([]string, error) {
	keyBytes := make([]byte, 16)
	rand.Read(keyBytes)
	key := base64.StdEncoding.EncodeToString(keyBytes)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Origin", origin)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, fmt.Errorf("exec: upgrade refused: %s", resp.Status)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		resp.Body.Close()
		return nil, errors.New("exec: bad Sec-WebSocket-Accept")
	}
	// Since Go 1.12 the body of a 101 response is the raw, bidirectional connection.
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return nil, errors.New("exec: the upgraded body is not writable")
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	var answers []string
	for _, cmd := range commands {
		if err := writeFrame(conn, 0x1, []byte(cmd)); err != nil {
			return answers, err
		}
		op, payload, err := readFrame(r)
		if err != nil {
			return answers, err
		}
		if op != 0x1 {
			return answers, fmt.Errorf("exec: unexpected frame opcode %d", op)
		}
		answers = append(answers, string(payload))
	}
	writeFrame(conn, 0x8, []byte{0x03, 0xe8}) // close, 1000 normal
	return answers, nil
}

// writeFrame writes one final, masked client frame (RFC 6455).
func writeFrame(w io.Writer, opcode byte, payload []byte) error {
	header := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n < 126:
		header = append(header, 0x80|byte(n))
	case n <= 0xffff:
		header = append(header, 0x80|126, byte(n>>8), byte(n))
	default:
		return errors.New("frame too large for this demo")
	}
	mask := make([]byte, 4)
	rand.Read(mask)
	header = append(header, mask...)
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	_, err := w.Write(append(header, masked...))
	return err
}

// readFrame reads one unmasked server frame.
func readFrame(r *bufio.Reader) (opcode byte, payload []byte, err error) {
	var head [2]byte
	if _, err = io.ReadFull(r, head[:]); err != nil {
		return 0, nil, err
	}
	opcode = head[0] & 0x0f
	n := uint64(head[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err = io.ReadFull(r, ext[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err = io.ReadFull(r, ext[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > 1<<20 {
		return 0, nil, errors.New("frame too large")
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r, payload)
	return opcode, payload, err
}
