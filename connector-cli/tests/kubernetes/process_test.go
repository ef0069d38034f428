package kubernetes

// Child processes (etcd, kube-apiserver, connector, the kubelet stand-in,
// kubectl) whose output is kept, written to a log file per process, and
// waited on line by line.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hangGuard bounds every wait for something that happens in a working system
// within seconds (a log line, a connection, kubectl's answer), so a broken one
// fails instead of hanging. It is not a timing threshold: nothing is asserted
// about how long the wait took.
const hangGuard = 90 * time.Second

// startGuard bounds a component's start-up (kube-apiserver is ready in 10 to
// 60 seconds on a busy 2-core machine).
const startGuard = 5 * time.Minute

// proc is a running child process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File

	mu    sync.Mutex
	lines []string
	more  chan struct{} // signalled on every new line and at exit
	done  chan struct{} // closed when the process has exited and its output is read
	err   error         // Wait's result, once done
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

// startProc runs bin with args, inside network namespace netns when it is
// not empty. Its stdout and stderr are collected. It is killed at the end of
// the run if still running.
func startProc(t testing.TB, name, netns string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p, err := spawn(name, netns, env, bin, args...)
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	return p
}

func spawn(name, netns string, env []string, bin string, args ...string) (*proc, error) {
	var cmd *exec.Cmd
	if netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", netns, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Env = append(childEnv(), env...)
	// Killed with the test process, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	log, err := os.Create(filepath.Join(workDir, "logs", uniqueName(name)+".log"))
	if err != nil {
		return nil, err
	}
	reader, writer := io.Pipe()
	cmd.Stdout, cmd.Stderr = writer, writer
	p := &proc{name: name, cmd: cmd, log: log, more: make(chan struct{}, 1), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		scanner := bufio.NewScanner(reader)
		scanner.Buffer(make([]byte, 64<<10), 4<<20)
		for scanner.Scan() {
			line := scanner.Text()
			fmt.Fprintln(log, line)
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			p.signal()
		}
		_, _ = io.Copy(io.Discard, reader)
	}()
	go func() {
		err := cmd.Wait()
		writer.Close()
		<-scanned
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		log.Close()
		close(p.done)
		p.signal()
	}()
	return p, nil
}

var (
	namesMu sync.Mutex
	names   = map[string]int{}
)

// uniqueName numbers the log files of processes started more than once.
func uniqueName(name string) string {
	namesMu.Lock()
	defer namesMu.Unlock()
	names[name]++
	if names[name] == 1 {
		return name
	}
	return fmt.Sprintf("%s.%d", name, names[name])
}

// childEnv is this process's environment without the suite's own variables.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "E2E_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *proc) signal() {
	select {
	case p.more <- struct{}{}:
	default:
	}
}

// mark is a position in the output: waitFrom looks only at lines after it.
func (p *proc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// waitFor returns the first output line that contains every needle.
func (p *proc) waitFor(t testing.TB, needles ...string) string {
	t.Helper()
	return p.waitFrom(t, 0, hangGuard, needles...)
}

// waitFrom returns the first line after mark that contains every needle; it
// fails the test when the process exits first or guard passes.
func (p *proc) waitFrom(t testing.TB, mark int, guard time.Duration, needles ...string) string {
	t.Helper()
	line, err := p.await(mark, guard, needles...)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// find returns the first line from mark on that contains every needle.
func (p *proc) find(mark int, needles []string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, line := range p.lines[min(mark, len(p.lines)):] {
		if containsAll(line, needles) {
			return line, true
		}
	}
	return "", false
}

func (p *proc) await(mark int, guard time.Duration, needles ...string) (string, error) {
	deadline := time.After(guard)
	for {
		if line, ok := p.find(mark, needles); ok {
			return line, nil
		}
		select {
		case <-p.done:
			// Lines read before the exit were looked at above; look once more.
			if line, ok := p.find(mark, needles); ok {
				return line, nil
			}
			return "", fmt.Errorf("%s exited (%v) before printing a line with %q:\n%s", p.name, p.exitErr(), needles, p.tail(30))
		default:
		}
		select {
		case <-p.more:
		case <-deadline:
			return "", fmt.Errorf("%s printed no line with %q within %s:\n%s", p.name, needles, guard, p.tail(30))
		}
	}
}

func containsAll(line string, needles []string) bool {
	for _, n := range needles {
		if !strings.Contains(line, n) {
			return false
		}
	}
	return true
}

func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail is the last n lines of output.
func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := p.lines
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop ends the process with SIGTERM (SIGKILL if it has not exited within
// the hang guard) and waits for it.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(hangGuard):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stopAll ends every child still running, at the end of the run.
func stopAll() {
	procsMu.Lock()
	all := procs
	procs = nil
	procsMu.Unlock()
	for i := len(all) - 1; i >= 0; i-- {
		if !all[i].exited() {
			_ = all[i].cmd.Process.Kill()
			<-all[i].done
		}
	}
}

// result is what a command that ran to its end printed.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit code %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// runCmd runs a command to its end (killed when the hang guard passes,
// which fails the test) with stdin as its input.
func runCmd(t testing.TB, stdin io.Reader, bin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = childEnv()
	cmd.Stdin = stdin
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		t.Fatalf("%s %q still running after %s (hang guard); killed.\nstdout: %s\nstderr: %s", filepath.Base(bin), args, hangGuard, r.stdout, r.stderr)
	}
	if exit, ok := err.(*exec.ExitError); ok {
		r.code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s %q: %v", bin, args, err)
	}
	return r
}
