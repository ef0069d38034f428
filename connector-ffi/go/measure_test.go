package connector

import (
	"context"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMeasureRoundTrip measures, in one run, a small-message round trip
// (write 64 bytes, read the echo) through an echo target:
//
//   - through the Go Conn (socketpair hand-over, the design the package uses),
//   - through blocking C read/write calls per message (the alternative),
//   - through the Rust API alone, on the library's runtime (the baseline).
//
// It reports the figures and checks only that every echo came back intact.
// CONNECTOR_MEASURE_ITERATIONS sets the round trips per variant (default 1000).
func TestMeasureRoundTrip(t *testing.T) {
	iterations := 1000
	if v, err := strconv.Atoi(os.Getenv("CONNECTOR_MEASURE_ITERATIONS")); err == nil && v > 0 {
		iterations = v
	}
	const size = 64
	tn := newTunnel(t)
	target := echoTarget(t)
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i)
	}
	echo := make([]byte, size)
	roundTrips := func(w io.Writer, r io.Reader) time.Duration {
		t.Helper()
		for range iterations / 10 { // warm-up
			w.Write(msg)
			io.ReadFull(r, echo)
		}
		start := time.Now()
		for range iterations {
			if _, err := w.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(r, echo); err != nil {
				t.Fatal(err)
			}
		}
		elapsed := time.Since(start) / time.Duration(iterations)
		if string(echo) != string(msg) {
			t.Fatal("echo differs")
		}
		return elapsed
	}

	conn, err := tn.srv.DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := tn.srv.dialRaw(target)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	// Interleaved rounds, so that load from other processes hits every
	// variant alike; the median round is reported.
	const rounds = 5
	var goConn, blockingCalls, rust []time.Duration
	for range rounds {
		goConn = append(goConn, roundTrips(conn, conn))
		blockingCalls = append(blockingCalls, roundTrips(raw, raw))
		r, err := tn.srv.rustRoundTrip(target, iterations, size)
		if err != nil {
			t.Fatal(err)
		}
		rust = append(rust, r)
	}
	g, b, r := median(goConn), median(blockingCalls), median(rust)
	t.Logf("round trip of %d bytes through server + agent + echo target on loopback, one process;", size)
	t.Logf("median of %d interleaved rounds of %d round trips each:", rounds, iterations)
	t.Logf("  Go net.Conn (socketpair):      %8.1f µs", us(g))
	t.Logf("  Go, blocking C calls:          %8.1f µs", us(b))
	t.Logf("  Rust API (no boundary):        %8.1f µs", us(r))
	t.Logf("  boundary cost, socketpair:     %+8.1f µs per round trip", us(g-r))
	t.Logf("  boundary cost, blocking calls: %+8.1f µs per round trip", us(b-r))

	// Bulk: 16 MiB echoed (written and read back concurrently), 64 KiB calls.
	bulk := func(rw io.ReadWriter) float64 {
		t.Helper()
		const total = 16 << 20
		chunk := make([]byte, 64<<10)
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			var err error
			for sent := 0; sent < total && err == nil; sent += len(chunk) {
				_, err = rw.Write(chunk)
			}
			done <- err
		}()
		buf := make([]byte, 64<<10)
		for got := 0; got < total; {
			n, err := rw.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return float64(total) / (1 << 20) / time.Since(start).Seconds()
	}
	t.Logf("echo throughput, 16 MiB each way: Go net.Conn (socketpair) %.0f MiB/s, Go blocking C calls %.0f MiB/s",
		bulk(conn), bulk(raw))

	// OS threads held by 100 idle connections, each with a Read pending
	// (an apiserver holds many idle `logs -f` / `exec` streams).
	const idle = 100
	pendingReads := func(dial func() (io.Reader, func())) int {
		t.Helper()
		before := threads(t)
		var closers []func()
		var wg sync.WaitGroup
		for range idle {
			r, closer := dial()
			closers = append(closers, closer)
			wg.Go(func() { r.Read(make([]byte, 1)) })
		}
		// Wait until every reader is parked (in the poller or in C).
		deadline := time.Now().Add(10 * time.Second)
		var after int
		for time.Now().Before(deadline) {
			runtime.Gosched()
			after = threads(t)
			if after-before >= idle-1 || blockedReaders() >= idle {
				break
			}
		}
		after = threads(t)
		for _, c := range closers {
			c()
		}
		wg.Wait()
		return after - before
	}
	socketThreads := pendingReads(func() (io.Reader, func()) {
		c, err := tn.srv.DialContext(context.Background(), "tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		return c, func() { c.Close() }
	})
	blockingThreads := pendingReads(func() (io.Reader, func()) {
		r, err := tn.srv.dialRaw(target)
		if err != nil {
			t.Fatal(err)
		}
		return r, r.Close
	})
	t.Logf("extra OS threads with %d idle connections, each with a pending Read: socketpair %d, blocking C calls %d",
		idle, socketThreads, blockingThreads)
}

// threads is the process's OS thread count.
func threads(t *testing.T) int {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// blockedReaders counts goroutines parked in a netpoller read.
func blockedReaders() int {
	buf := make([]byte, 1<<22)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "internal/poll.(*pollDesc).waitRead")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
