package main

import (
	"bufio"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// supervisor starts child processes, records their pids in <state>/children
// so a later launcher can clean up after a crash, and stops them in reverse
// order.
type supervisor struct {
	stateDir string
	mu       sync.Mutex
	procs    []*child
	died     chan string
	// env, when set, is the environment of the next child started.
	env []string
}

type child struct {
	name     string
	cmd      *exec.Cmd
	done     chan struct{}
	stopping bool
}

func newSupervisor(stateDir string) *supervisor {
	return &supervisor{stateDir: stateDir, died: make(chan string, 8)}
}

func (s *supervisor) start(name, bin string, args ...string) error {
	logFile, err := os.Create(filepath.Join(s.stateDir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = s.env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	s.mu.Lock()
	s.procs = append(s.procs, c)
	s.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(s.stateDir, "children"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		fmt.Fprintf(f, "%d %s\n", cmd.Process.Pid, name)
		f.Close()
	}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(c.done)
		s.mu.Lock()
		stopping := c.stopping
		s.mu.Unlock()
		if !stopping {
			s.died <- name
		}
	}()
	log.Printf("started %s (pid %d), log %s", name, cmd.Process.Pid, logFile.Name())
	return nil
}

// stopAll sends SIGTERM to every child, newest first, and SIGKILL to any
// still running after ten seconds.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	procs := append([]*child(nil), s.procs...)
	for _, c := range procs {
		c.stopping = true
	}
	s.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		c := procs[i]
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			log.Printf("%s did not stop within 10s; killing it", c.name)
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		log.Printf("stopped %s", c.name)
	}
	_ = os.Remove(filepath.Join(s.stateDir, "children"))
}

// cleanupStale stops a launcher and children left by an earlier run that
// used the same state directory (for example after the test run was killed).
func cleanupStale(stateDir string) {
	if pid, ok := readPid(filepath.Join(stateDir, "launcher.pid")); ok && pid != os.Getpid() && cmdlineHas(pid, "chorus-cluster") {
		log.Printf("an earlier launcher (pid %d) is still running for %s; stopping it", pid, stateDir)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		waitGone(pid, 20*time.Second)
	}
	f, err := os.Open(filepath.Join(stateDir, "children"))
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		pid, err := strconv.Atoi(fields[0])
		if err != nil || !cmdlineHas(pid, stateDir) {
			continue
		}
		log.Printf("found %s (pid %d) left behind by an earlier run; stopping it", fields[1], pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if !waitGone(pid, 10*time.Second) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
}

func readPid(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

func cmdlineHas(pid int, needle string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), needle)
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}
