package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"time"
)

// Address ranges of the local cluster. The pod range is the node bridge's
// (one node, so one /24); the service range is where ClusterIPs come from.
const (
	serviceCIDR = "10.96.0.0/16"
	clusterCIDR = "10.244.0.0/16"
)

// startControllerManager runs kube-controller-manager with every default
// controller (ServiceAccount and token, garbage collector, Deployment and
// ReplicaSet, EndpointSlice, HPA, namespace, ...), one ServiceAccount per
// controller, and leader election off, and waits for /healthz.
//
// extra flags are appended (--kwok-only raises the client rate limits: at
// the defaults, 20 requests/s, the ReplicaSet and Deployment controllers
// take minutes to report thousands of fake pods).
func startControllerManager(ctx context.Context, sup *supervisor, binDir, stateDir, apiURL string, p *pkiFiles, extra ...string) error {
	kubeconfig, err := componentKubeconfig(p, stateDir, apiURL, "kube-controller-manager", "system:kube-controller-manager")
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(stateDir, "kube-controller-manager"),
		"--leader-elect=false",
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.saKey,
		"--root-ca-file=" + p.caCert,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--cluster-cidr=" + clusterCIDR,
		"--cluster-signing-cert-file=" + p.caCert,
		"--cluster-signing-key-file=" + p.caKey,
		// The HPA reacts within tests' patience: sync every 5 s (default 15 s).
		"--horizontal-pod-autoscaler-sync-period=5s",
		"--profiling=false",
		"--v=1",
	}
	err = sup.start("kube-controller-manager", filepath.Join(binDir, "kube-controller-manager"), append(args, extra...)...)
	if err != nil {
		return err
	}
	return waitHealthz(ctx, sup, port, stateDir, "kube-controller-manager")
}

// startScheduler runs kube-scheduler with leader election off and waits for
// /healthz.
func startScheduler(ctx context.Context, sup *supervisor, binDir, stateDir, apiURL string, p *pkiFiles, extra ...string) error {
	kubeconfig, err := componentKubeconfig(p, stateDir, apiURL, "kube-scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(stateDir, "kube-scheduler"),
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}
	err = sup.start("kube-scheduler", filepath.Join(binDir, "kube-scheduler"), append(args, extra...)...)
	if err != nil {
		return err
	}
	return waitHealthz(ctx, sup, port, stateDir, "kube-scheduler")
}

// componentKubeconfig writes <state>/<name>.kubeconfig for a component that
// authenticates as user cn in groups orgs, and returns its path.
func componentKubeconfig(p *pkiFiles, stateDir, apiURL, name, cn string, orgs ...string) (string, error) {
	id, err := p.clientIdentity(name, cn, orgs...)
	if err != nil {
		return "", err
	}
	kubeconfig := filepath.Join(stateDir, name+".kubeconfig")
	return kubeconfig, writeKubeconfig(kubeconfig, apiURL, p, id)
}

// waitHealthz polls a component's self-signed https://127.0.0.1:port/healthz
// (open to anonymous requests by default) for up to two minutes.
func waitHealthz(ctx context.Context, sup *supervisor, port int, stateDir, name string) error {
	client := insecureClient()
	url := fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
	if err := waitHTTP(ctx, sup, client, url, 2*time.Minute); err != nil {
		return fmt.Errorf("%s did not become healthy: %w (log: %s)", name, err, filepath.Join(stateDir, name+".log"))
	}
	return nil
}

// insecureClient skips TLS verification: for health checks of components
// that serve a self-signed certificate on loopback.
func insecureClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // loopback health checks of self-signed components
	return &http.Client{Timeout: 5 * time.Second, Transport: tr}
}
