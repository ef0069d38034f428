package kubernetes

// Throw-away certificates and keys for one run, made with crypto/x509: a
// Kubernetes CA (kube-apiserver's serving and client certificates, the
// kubelet's serving certificate, kubectl's admin client certificate), a CA
// for connector's agent channel (the server's certificate), the
// ServiceAccount signing key, and the kubeconfig files.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newKey() *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return key
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err)
	}
	return n
}

func newCA(name string) *ca {
	key := newKey()
	template := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return &ca{cert: cert, key: key}
}

// leaf is what issue writes: a certificate and its key, PEM-encoded.
type leaf struct {
	certPEM, keyPEM []byte
}

// issue signs a certificate for subject with the given names (IP addresses
// become IP SANs) and extended key usage.
func (c *ca) issue(subject pkix.Name, names []string, usage x509.ExtKeyUsage) leaf {
	key := newKey()
	template := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, name := range names {
		if ip := net.ParseIP(name); ip != nil {
			template.IPAddresses = append(template.IPAddresses, ip)
		} else {
			template.DNSNames = append(template.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, template, c.cert, key.Public(), c.key)
	if err != nil {
		panic(err)
	}
	return leaf{certPEM: pemBlock("CERTIFICATE", der), keyPEM: keyPEM(key)}
}

func (c *ca) certPEM() []byte { return pemBlock("CERTIFICATE", c.cert.Raw) }

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func keyPEM(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

// pki holds the paths of every file the run's components read.
type pki struct {
	dir string
	// Kubernetes side.
	kubeCA, apiserverCert, apiserverKey, kubeletClientCert, kubeletClientKey string
	kubeletCert, kubeletKey, saKey, saPub, adminKubeconfig                   string
	// connector's agent channel.
	connectorCA, connectorServerCert, connectorServerKey string
	// connector's HTTP CONNECT frontend over TCP with mutual TLS: its serving
	// certificate (from connectorCA), the CA of its clients and
	// kube-apiserver's client certificate from it.
	frontendCert, frontendKey, frontendClientCA, egressClientCert, egressClientKey string
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

func write(path string, data []byte) {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		panic(err)
	}
}

// newPKI writes every certificate, key and kubeconfig of a run into dir.
// serverIP is connector server's address on the agent channel, kubeletIP the
// node's InternalIP.
func newPKI(dir, serverIP, kubeletIP, nodeName string) *pki {
	p := &pki{dir: dir}
	kube := newCA("connector e2e kubernetes CA")
	p.kubeCA = p.path("kube-ca.pem")
	write(p.kubeCA, kube.certPEM())

	writeLeaf := func(name string, l leaf) (string, string) {
		cert, key := p.path(name+".pem"), p.path(name+"-key.pem")
		write(cert, l.certPEM)
		write(key, l.keyPEM)
		return cert, key
	}
	p.apiserverCert, p.apiserverKey = writeLeaf("apiserver", kube.issue(pkix.Name{CommonName: "kube-apiserver"},
		[]string{"127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"},
		x509.ExtKeyUsageServerAuth))
	// kube-apiserver's client certificate towards kubelets: what the
	// kubelet stand-in requires of every request.
	p.kubeletClientCert, p.kubeletClientKey = writeLeaf("apiserver-kubelet-client",
		kube.issue(pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}, nil, x509.ExtKeyUsageClientAuth))
	// The kubelet's serving certificate names its InternalIP, which
	// kube-apiserver verifies through the tunnel (--kubelet-certificate-authority).
	p.kubeletCert, p.kubeletKey = writeLeaf("kubelet",
		kube.issue(pkix.Name{CommonName: "system:node:" + nodeName}, []string{kubeletIP, nodeName}, x509.ExtKeyUsageServerAuth))
	admin := kube.issue(pkix.Name{CommonName: "e2e-admin", Organization: []string{"system:masters"}}, nil, x509.ExtKeyUsageClientAuth)
	adminCert, adminKey := writeLeaf("admin", admin)

	sa := newKey()
	p.saKey = p.path("sa-key.pem")
	write(p.saKey, keyPEM(sa))
	pub, err := x509.MarshalPKIXPublicKey(sa.Public())
	if err != nil {
		panic(err)
	}
	p.saPub = p.path("sa.pub")
	write(p.saPub, pemBlock("PUBLIC KEY", pub))

	p.adminKubeconfig = p.path("admin.kubeconfig")
	write(p.adminKubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: %s
users:
- name: admin
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, p.kubeCA, adminCert, adminKey)))

	agents := newCA("connector e2e agents CA")
	p.connectorCA = p.path("connector-ca.pem")
	write(p.connectorCA, agents.certPEM())
	p.connectorServerCert, p.connectorServerKey = writeLeaf("connector-server",
		agents.issue(pkix.Name{CommonName: "connector server"}, []string{serverIP}, x509.ExtKeyUsageServerAuth))
	p.frontendCert, p.frontendKey = writeLeaf("connector-frontend",
		agents.issue(pkix.Name{CommonName: "connector frontend"}, []string{"127.0.0.1"}, x509.ExtKeyUsageServerAuth))
	frontendClients := newCA("connector e2e frontend clients CA")
	p.frontendClientCA = p.path("frontend-client-ca.pem")
	write(p.frontendClientCA, frontendClients.certPEM())
	p.egressClientCert, p.egressClientKey = writeLeaf("apiserver-egress",
		frontendClients.issue(pkix.Name{CommonName: "kube-apiserver"}, nil, x509.ExtKeyUsageClientAuth))
	return p
}
