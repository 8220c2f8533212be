package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// startEtcd runs etcd on two free loopback ports and waits for /health.
func startEtcd(ctx context.Context, sup *supervisor, binDir, stateDir string) (string, error) {
	clientPort, err := freePort()
	if err != nil {
		return "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", err
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	err = sup.start("etcd", filepath.Join(binDir, "etcd"),
		"--name=chorus",
		"--data-dir="+filepath.Join(stateDir, "etcd-data"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=chorus="+peerURL,
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	if err != nil {
		return "", err
	}
	if err := waitHTTP(ctx, sup, http.DefaultClient, clientURL+"/health", time.Minute); err != nil {
		return "", fmt.Errorf("etcd did not become healthy: %w (log: %s)", err, filepath.Join(stateDir, "etcd.log"))
	}
	return clientURL, nil
}

// apiserverProfiling turns on kube-apiserver's /debug/pprof (--profiling).
var apiserverProfiling bool

// startAPIServer runs kube-apiserver with RBAC authorization, client
// certificate authentication and service-account keys, and waits for /readyz.
//
// Without a node it listens on 127.0.0.1 only and the ServiceAccount admission
// plugin is off (nothing would create default ServiceAccounts). With a node it
// listens on the node bridge's address (pods reach it there, through the
// `kubernetes` Service), authorizes kubelets with the Node authorizer, talks
// to the kubelet with its own client certificate and serves aggregated APIs
// (metrics-server).
func startAPIServer(ctx context.Context, sup *supervisor, binDir, stateDir string, p *pkiFiles, etcdURL string, timeout time.Duration, node *nodeConfig) (string, error) {
	host := "127.0.0.1"
	if node != nil {
		host = node.hostIP
	}
	port, err := freePortOn(host)
	if err != nil {
		return "", err
	}
	url := fmt.Sprintf("https://%s:%d", host, port)
	modeFlags := []string{
		"--authorization-mode=RBAC",
		"--disable-admission-plugins=ServiceAccount",
	}
	if node != nil {
		kubeletClient, err := p.clientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
		if err != nil {
			return "", err
		}
		frontProxy, err := p.clientIdentity("front-proxy-client", "front-proxy-client")
		if err != nil {
			return "", err
		}
		modeFlags = []string{
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-client-certificate=" + kubeletClient.certFile,
			"--kubelet-client-key=" + kubeletClient.keyFile,
			"--kubelet-preferred-address-types=InternalIP",
			"--requestheader-client-ca-file=" + p.caCert,
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-username-headers=X-Remote-User",
			"--proxy-client-cert-file=" + frontProxy.certFile,
			"--proxy-client-key-file=" + frontProxy.keyFile,
			"--enable-aggregator-routing=true",
		}
	}
	args := append([]string{
		"--bind-address=" + host,
		"--advertise-address=" + host,
		fmt.Sprintf("--secure-port=%d", port),
		"--etcd-servers=" + etcdURL,
		"--cert-dir=" + p.dir,
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--client-ca-file=" + p.caCert,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--allow-privileged=true",
		fmt.Sprintf("--profiling=%t", apiserverProfiling),
		"--v=1",
	}, modeFlags...)
	if err := sup.start("kube-apiserver", filepath.Join(binDir, "kube-apiserver"), args...); err != nil {
		return "", err
	}
	client, err := adminHTTPClient(p)
	if err != nil {
		return "", err
	}
	if err := waitHTTP(ctx, sup, client, url+"/readyz", timeout); err != nil {
		return "", fmt.Errorf("kube-apiserver did not become ready: %w (log: %s)", err, filepath.Join(stateDir, "kube-apiserver.log"))
	}
	return url, nil
}

func adminHTTPClient(p *pkiFiles) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.caPEM) {
		return nil, fmt.Errorf("bad CA certificate")
	}
	cert, err := tls.X509KeyPair(p.adminCertPEM, p.adminKeyPEM)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      pool,
			Certificates: []tls.Certificate{cert},
		}},
	}, nil
}

// waitHTTP polls url until it answers 200, the context ends, a child dies or
// the timeout passes.
func waitHTTP(ctx context.Context, sup *supervisor, client *http.Client, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, lastLines(string(body), 3))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted")
		case name := <-sup.died:
			return fmt.Errorf("%s exited", name)
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("timed out after %s; last: %s", timeout, last)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func freePort() (int, error) { return freePortOn("127.0.0.1") }

// freePortOn returns a TCP port that is free on host right now.
func freePortOn(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeKubeconfig writes a kubeconfig for server that trusts the cluster CA
// and authenticates with id's client certificate.
func writeKubeconfig(path, server string, p *pkiFiles, id *identity) error {
	b64 := base64.StdEncoding.EncodeToString
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: chorus
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: chorus
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: chorus
  context:
    cluster: chorus
    user: chorus
    namespace: default
current-context: chorus
`, server, b64(p.caPEM), b64(id.certPEM), b64(id.keyPEM))
	return os.WriteFile(path, []byte(cfg), 0o600)
}
