package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pkiFiles names the files generatePKI writes; the *PEM fields hold the same
// bytes for embedding in the kubeconfig.
type pkiFiles struct {
	dir                              string
	caCert, caKey                    string
	servingCert, servingKey          string
	adminCert, adminKey              string
	saKey, saPub                     string
	caPEM, adminCertPEM, adminKeyPEM []byte

	ca    *x509.Certificate
	caPrv *ecdsa.PrivateKey
}

// identity is a client certificate and key for one component, signed by the
// cluster CA, in PEM form (for its kubeconfig) and on disk.
type identity struct {
	certFile, keyFile string
	certPEM, keyPEM   []byte
}

// clientIdentity writes a client certificate for user cn in groups orgs to
// <pki>/<file>.crt and .key.
func (p *pkiFiles) clientIdentity(file, cn string, orgs ...string) (*identity, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	id := &identity{certFile: filepath.Join(p.dir, file+".crt"), keyFile: filepath.Join(p.dir, file+".key")}
	var err error
	id.certPEM, id.keyPEM, err = signLeaf(tmpl, p.ca, p.caPrv, id.certFile, id.keyFile)
	return id, err
}

// servingIdentity writes a serving certificate for the given IPs to
// <pki>/<file>.crt and .key.
func (p *pkiFiles) servingIdentity(file, cn string, ips ...net.IP) (*identity, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  ips,
	}
	id := &identity{certFile: filepath.Join(p.dir, file+".crt"), keyFile: filepath.Join(p.dir, file+".key")}
	var err error
	id.certPEM, id.keyPEM, err = signLeaf(tmpl, p.ca, p.caPrv, id.certFile, id.keyFile)
	return id, err
}

// generatePKI writes a throwaway CA, a serving certificate for loopback, the
// extra addresses given (the node bridge's) and the in-cluster service names,
// an admin client certificate in group system:masters, and the
// service-account signing key pair.
func generatePKI(dir string, extraIPs ...net.IP) (*pkiFiles, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pkiFiles{
		dir:         dir,
		caCert:      filepath.Join(dir, "ca.crt"),
		caKey:       filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"),
		servingKey:  filepath.Join(dir, "apiserver.key"),
		adminCert:   filepath.Join(dir, "admin.crt"),
		adminKey:    filepath.Join(dir, "admin.key"),
		saKey:       filepath.Join(dir, "sa.key"),
		saPub:       filepath.Join(dir, "sa.pub"),
	}
	now := time.Now().Add(-time.Hour)
	validity := 30 * 24 * time.Hour

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "chorus-test-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p.ca, p.caPrv = ca, caKey
	p.caPEM = pemBlock("CERTIFICATE", caDER)
	if err := writeCertAndKey(p.caCert, p.caKey, caDER, caKey); err != nil {
		return nil, err
	}

	serving := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses:  append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}, extraIPs...),
	}
	if _, _, err := signLeaf(serving, ca, caKey, p.servingCert, p.servingKey); err != nil {
		return nil, err
	}

	admin := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "chorus-admin", Organization: []string{"system:masters"}},
		NotBefore:    now,
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if p.adminCertPEM, p.adminKeyPEM, err = signLeaf(admin, ca, caKey, p.adminCert, p.adminKey); err != nil {
		return nil, err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saKeyDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saKey, pemBlock("EC PRIVATE KEY", saKeyDER), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saPub, pemBlock("PUBLIC KEY", saPubDER), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

func signLeaf(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certPath, keyPath string) ([]byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	if err := writeCertAndKey(certPath, keyPath, der, key); err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", keyDER), nil
}

func writeCertAndKey(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pemBlock("CERTIFICATE", der), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pemBlock("EC PRIVATE KEY", keyDER), 0o600)
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
