// Command chorus-cluster runs a throwaway Kubernetes control plane on loopback:
// etcd and the stock kube-apiserver, both built from Go modules by this module.
//
// It generates a CA, a serving certificate, an admin client certificate
// (group system:masters) and a service-account key pair in the state
// directory, starts etcd and kube-apiserver (RBAC authorization), waits for
// /readyz, writes a kubeconfig and a "ready" marker, and then waits. On
// SIGTERM or SIGINT, when the process named by --exit-with-pid disappears, or
// when a child dies, it stops everything and removes its pid file.
//
// Children are started with a parent-death signal, so killing the launcher
// with SIGKILL also kills etcd and kube-apiserver. A launcher that finds
// processes left behind by an earlier run in the same state directory stops
// them first and says so.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

func main() {
	var (
		binDir     = flag.String("bin-dir", "", "directory holding the etcd and kube-apiserver binaries (required)")
		stateDir   = flag.String("state-dir", "", "directory for certificates, data, logs and the kubeconfig (required)")
		exitWith   = flag.Int("exit-with-pid", 0, "stop the control plane when this process exits (0: never)")
		readyAfter = flag.Duration("ready-timeout", 3*time.Minute, "how long to wait for kube-apiserver /readyz")
	)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmsgprefix)
	log.SetPrefix("chorus-cluster: ")
	if *binDir == "" || *stateDir == "" {
		log.Fatal("--bin-dir and --state-dir are required")
	}
	// Parent-death signals fire when the creating OS thread exits; keep the
	// main goroutine on one thread for the life of the process.
	runtime.LockOSThread()

	if err := run(*binDir, *stateDir, *exitWith, *readyAfter); err != nil {
		log.Fatalf("error: %v", err)
	}
}

func run(binDir, stateDir string, exitWith int, readyTimeout time.Duration) error {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	cleanupStale(stateDir)
	// A fresh cluster every start: old data, certificates and markers go.
	for _, name := range []string{"etcd-data", "pki", "kubeconfig", "ready", "children"} {
		_ = os.RemoveAll(filepath.Join(stateDir, name))
	}
	if err := os.WriteFile(filepath.Join(stateDir, "launcher.pid"), []byte(fmt.Sprint(os.Getpid())), 0o600); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(stateDir, "launcher.pid"))

	pki, err := generatePKI(filepath.Join(stateDir, "pki"))
	if err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	if exitWith > 0 {
		ctx = watchPid(ctx, exitWith)
	}

	sup := newSupervisor(stateDir)
	defer sup.stopAll()

	etcdURL, err := startEtcd(ctx, sup, binDir, stateDir)
	if err != nil {
		return err
	}
	apiURL, err := startAPIServer(ctx, sup, binDir, stateDir, pki, etcdURL, readyTimeout)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(stateDir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, apiURL, pki); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stateDir, "ready"), []byte(kubeconfig+"\n"), 0o600); err != nil {
		return err
	}
	log.Printf("ready: kube-apiserver %s, etcd %s, kubeconfig %s", apiURL, etcdURL, kubeconfig)

	select {
	case <-ctx.Done():
		log.Printf("stopping on request")
		return nil
	case name := <-sup.died:
		return fmt.Errorf("%s exited unexpectedly; see %s", name, filepath.Join(stateDir, name+".log"))
	}
}

// watchPid returns a context cancelled once pid no longer exists.
func watchPid(parent context.Context, pid int) context.Context {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
					log.Printf("process %d is gone; stopping", pid)
					cancel()
					return
				}
			}
		}
	}()
	return ctx
}
