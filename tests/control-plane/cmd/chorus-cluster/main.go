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
	"net"
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
		withNode   = flag.Bool("node", false, "also run kube-controller-manager, kube-scheduler, one real node (containerd, runc, CNI, kubelet, kube-proxy), kwok and metrics-server (needs root)")
		imageDir   = flag.String("image-dir", "", "with --node: import every *.tar image archive in this directory into the node's containerd")
		fakeNodes  = flag.Int("fake-nodes", 4, "with --node or --kwok-only: how many kwok fake nodes to create")
		kwokOnly   = flag.Bool("kwok-only", false, "also run kube-controller-manager, kube-scheduler and kwok with --fake-nodes untainted fake nodes, and no real node (no root, no machine lock): a separate control plane for scale benchmarks")
		cleanup    = flag.Bool("cleanup", false, "only remove what an earlier (killed) launcher left for --state-dir, then exit")
		profile    = flag.Bool("profiling", false, "serve kube-apiserver's /debug/pprof (for `make bench-operator` with CHORUS_BENCH_PPROF; off otherwise, as in production)")
	)
	flag.Parse()
	apiserverProfiling = *profile
	log.SetFlags(log.LstdFlags | log.Lmsgprefix)
	log.SetPrefix("chorus-cluster: ")
	if (*binDir == "" && !*cleanup) || *stateDir == "" {
		log.Fatal("--bin-dir and --state-dir are required")
	}
	// Parent-death signals fire when the creating OS thread exits; keep the
	// main goroutine on one thread for the life of the process.
	runtime.LockOSThread()

	if *cleanup {
		dir, err := filepath.Abs(*stateDir)
		if err != nil {
			log.Fatalf("error: %v", err)
		}
		cleanupStale(dir)
		if _, err := os.Stat(filepath.Join(dir, "node")); err == nil && cleanupNode(dir) {
			log.Printf("removed what an earlier node run left behind (processes, mounts, network namespaces, iptables rules)")
		}
		return
	}
	if *withNode && *kwokOnly {
		log.Fatal("--node and --kwok-only exclude each other")
	}
	opts := options{binDir: *binDir, stateDir: *stateDir, exitWith: *exitWith, readyTimeout: *readyAfter,
		node: *withNode, kwokOnly: *kwokOnly, imageDir: *imageDir, fakeNodes: *fakeNodes}
	if err := run(opts); err != nil {
		log.Fatalf("error: %v", err)
	}
}

// options are the launcher's flags.
type options struct {
	binDir, stateDir, imageDir string
	exitWith, fakeNodes        int
	readyTimeout               time.Duration
	node, kwokOnly             bool
}

func run(o options) error {
	binDir, exitWith, readyTimeout := o.binDir, o.exitWith, o.readyTimeout
	stateDir, err := filepath.Abs(o.stateDir)
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

	var node *nodeConfig
	var extraIPs []net.IP
	if o.node {
		if node, err = prepareNode(stateDir); err != nil {
			return err
		}
		defer node.release()
		defer func() {
			cleanupNode(stateDir)
			log.Printf("node removed (processes, mounts, network namespaces, bridge, iptables rules)")
		}()
		extraIPs = append(extraIPs, net.ParseIP(node.hostIP))
	}
	pki, err := generatePKI(filepath.Join(stateDir, "pki"), extraIPs...)
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
	apiURL, err := startAPIServer(ctx, sup, binDir, stateDir, pki, etcdURL, readyTimeout, node)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(stateDir, "kubeconfig")
	adminID := &identity{certFile: pki.adminCert, keyFile: pki.adminKey, certPEM: pki.adminCertPEM, keyPEM: pki.adminKeyPEM}
	if err := writeKubeconfig(kubeconfig, apiURL, pki, adminID); err != nil {
		return err
	}
	if node != nil {
		a, err := newAdmin(kubeconfig)
		if err != nil {
			return err
		}
		if err := startControllerManager(ctx, sup, binDir, stateDir, apiURL, pki); err != nil {
			return err
		}
		if err := startScheduler(ctx, sup, binDir, stateDir, apiURL, pki); err != nil {
			return err
		}
		if err := startNode(ctx, sup, binDir, stateDir, o.imageDir, apiURL, pki, a); err != nil {
			return err
		}
		if err := startKwok(ctx, sup, binDir, stateDir, kubeconfig, a, o.fakeNodes, true); err != nil {
			return err
		}
		if err := startMetricsServer(ctx, sup, binDir, stateDir, kubeconfig, a); err != nil {
			return err
		}
	}
	if o.kwokOnly {
		a, err := newAdmin(kubeconfig)
		if err != nil {
			return err
		}
		if err := startControllerManager(ctx, sup, binDir, stateDir, apiURL, pki, scaleFlags(true)...); err != nil {
			return err
		}
		if err := startScheduler(ctx, sup, binDir, stateDir, apiURL, pki, "--kube-api-qps=500", "--kube-api-burst=1000"); err != nil {
			return err
		}
		// Every pod lands on a fake node: nothing to keep off them.
		if err := startKwok(ctx, sup, binDir, stateDir, kubeconfig, a, o.fakeNodes, false); err != nil {
			return err
		}
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

// scaleFlags are kube-controller-manager's flags for thousands of objects
// (--kwok-only): client rate limits and workers well above the defaults
// (20 requests/s, 5 workers per controller).
func scaleFlags(scale bool) []string {
	if !scale {
		return nil
	}
	return []string{"--kube-api-qps=500", "--kube-api-burst=1000",
		"--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20"}
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
