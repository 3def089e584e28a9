package httpx

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
)

// IsLoopback reports whether a listener's address is reachable only from
// this machine: a TCP address on a loopback IP (127.0.0.0/8, ::1) or a
// Unix socket. An unspecified address (0.0.0.0, ::) listens everywhere
// and is not loopback.
func IsLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

// LoopbackAddr reports whether a listen address ("host:port") would be
// reachable only from this machine, before listening on it: the host must
// be a loopback IP, or a name whose every address is loopback
// ("localhost"). An empty host means every interface.
func LoopbackAddr(ctx context.Context, hostport string) (bool, error) {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false, err
	}
	if host == "" {
		return false, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return false, err
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return false, nil
		}
	}
	return len(ips) > 0, nil
}

// maxCertFile bounds a CA file: a bundle of a few hundred certificates.
const maxCertFile = 4 << 20

// ReadCertPool reads a PEM file of CA certificates, for a client's
// RootCAs or a server's ClientCAs. A file without a certificate is an
// error naming it.
func ReadCertPool(path string) (*x509.CertPool, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > maxCertFile {
		return nil, fmt.Errorf("CA file %s: larger than %d bytes", path, maxCertFile)
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificates", path)
	}
	return pool, nil
}
