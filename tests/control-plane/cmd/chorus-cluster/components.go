package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log"
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

// startAPIServer runs kube-apiserver with RBAC authorization, client
// certificate authentication and service-account keys, and waits for /readyz.
func startAPIServer(ctx context.Context, sup *supervisor, binDir, stateDir string, p *pkiFiles, etcdURL string, timeout time.Duration) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	err = sup.start("kube-apiserver", filepath.Join(binDir, "kube-apiserver"),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--etcd-servers="+etcdURL,
		"--cert-dir="+p.dir,
		"--tls-cert-file="+p.servingCert,
		"--tls-private-key-file="+p.servingKey,
		"--client-ca-file="+p.caCert,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.saPub,
		"--service-account-signing-key-file="+p.saKey,
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		// No kube-controller-manager yet creates the default ServiceAccount.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	)
	if err != nil {
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

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writeKubeconfig(path, server string, p *pkiFiles) error {
	b64 := base64.StdEncoding.EncodeToString
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: chorus
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: chorus-admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: chorus
  context:
    cluster: chorus
    user: chorus-admin
    namespace: default
current-context: chorus
`, server, b64(p.caPEM), b64(p.adminCertPEM), b64(p.adminKeyPEM))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	log.Printf("wrote %s", path)
	return nil
}
