package appliance

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

// newCert makes a certificate for name, signed by ca, or self-signed
// (and able to sign others) when ca is nil.
func newCert(t *testing.T, name string, ca *testCA, server bool) (*testCA, tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	parent, signer := tmpl, key
	if ca == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	} else {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})},
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}
}

func writePEM(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func keyPEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// tlsClient trusts roots and presents cert, if given, whatever CAs the
// server asks for (Go's client would otherwise send no certificate that
// the server's CA list does not name).
func tlsClient(roots *x509.CertPool, cert ...tls.Certificate) *http.Client {
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if len(cert) > 0 {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert[0], nil }
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

// TestTLS serves the API over HTTPS with a self-signed certificate, and
// with a client CA (mutual TLS): a client certificate from that CA
// authenticates without a token; one from another CA is refused during
// the handshake; tokens keep working; health checks need neither.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	srv, _ := newCert(t, "snapscan-appliance", nil, true)
	certFile := writePEM(t, dir, "server.pem", srv.pem)
	keyFile := writePEM(t, dir, "server.key", keyPEM(t, srv.key))
	clientCA, _ := newCert(t, "operators CA", nil, false)
	_, operator := newCert(t, "operator", clientCA, false)
	otherCA, _ := newCert(t, "other CA", nil, false)
	_, stranger := newCert(t, "stranger", otherCA, false)
	caFile := writePEM(t, dir, "clients.pem", clientCA.pem)
	trusting := x509.NewCertPool()
	trusting.AddCert(srv.cert)

	type request struct {
		name   string
		client *http.Client
		path   string
		token  string
		want   int // 0: the connection fails
	}
	tests := []struct {
		name     string
		clientCA bool
		requests []request
	}{
		{"server certificate", false, []request{
			{"token", tlsClient(trusting), "/v1/scans", testToken, http.StatusOK},
			{"no token", tlsClient(trusting), "/v1/scans", "", http.StatusUnauthorized},
			{"wrong token", tlsClient(trusting), "/v1/scans", "not-the-api-token-at-all", http.StatusUnauthorized},
			{"health without token", tlsClient(trusting), "/healthz", "", http.StatusOK},
			{"client without the server's certificate", tlsClient(x509.NewCertPool()), "/v1/scans", testToken, 0},
			// No client CA configured: a certificate is no credential.
			{"client certificate, no token", tlsClient(trusting, operator), "/v1/scans", "", http.StatusUnauthorized},
		}},
		{"mutual TLS", true, []request{
			{"client certificate", tlsClient(trusting, operator), "/v1/scans", "", http.StatusOK},
			{"client certificate, metrics", tlsClient(trusting, operator), "/metrics", "", http.StatusOK},
			{"certificate from another CA", tlsClient(trusting, stranger), "/v1/scans", testToken, 0},
			{"no certificate, token", tlsClient(trusting), "/v1/scans", testToken, http.StatusOK},
			{"no certificate, no token", tlsClient(trusting), "/v1/scans", "", http.StatusUnauthorized},
			{"health without credentials", tlsClient(trusting), "/healthz", "", http.StatusOK},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := startApp(t, appOpts{
				client: tlsClient(trusting),
				edit: func(c *Config) {
					c.Server.TLS = TLSConfig{Cert: certFile, Key: keyFile}
					if tt.clientCA {
						c.Server.TLS.ClientCA = caFile
					}
				},
			})
			for _, r := range tt.requests {
				app.client = r.client
				code, err := app.call("GET", r.path, r.token, nil, nil)
				if code != r.want {
					t.Errorf("%s: GET %s = %d (%v), want %d", r.name, r.path, code, err, r.want)
				}
			}
			// Plain HTTP to the TLS port gets no API answer.
			app.client = &http.Client{Timeout: 10 * time.Second}
			base := app.base
			app.base = "http://" + base[len("https://"):]
			if code, _ := app.call("GET", "/v1/scans", testToken, nil, nil); code == http.StatusOK {
				t.Errorf("plain HTTP answered 200")
			}
		})
	}
}
