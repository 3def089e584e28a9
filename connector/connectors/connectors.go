// Package connectors opens a connector.Connector from its configuration,
// as the appliance's YAML gives it: which hypervisor, its endpoint, the
// files that hold its credentials, TLS settings (verification on unless
// switched off by name), and which of its VMs to scan.
package connectors

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/libvirt"
	"github.com/snapscan/snapscan/connector/vsphere"
)

// Config is one connector of the appliance's configuration:
//
//	connectors:
//	  - name: kvm1
//	    type: libvirt
//	    socket: /run/libvirt/libvirt-sock
//	    select: {all: true}
//	  - name: vc
//	    type: vsphere
//	    url: https://vcenter.example/sdk
//	    username_file: /etc/snapscan/vc.user
//	    password_file: /etc/snapscan/vc.pass
//	    ca_file: /etc/snapscan/vc-ca.pem
//	    mounts: {nfs-ds1: /mnt/nfs-ds1}
//	    select: {folders: [/DC1/vm/prod], exclude: ["*-template"]}
type Config struct {
	// Name identifies the connector in the inventory, logs and metrics.
	Name string `yaml:"name"`
	// Type is "libvirt" or "vsphere".
	Type string `yaml:"type"`

	// Socket is libvirtd's unix socket (libvirt).
	Socket string `yaml:"socket"`
	// PathMap maps host folders to where the appliance sees them (libvirt).
	PathMap map[string]string `yaml:"path_map"`

	// URL is the SDK endpoint (vsphere).
	URL string `yaml:"url"`
	// UsernameFile and PasswordFile hold the credentials, one line each
	// (vsphere); the configuration never holds a password itself.
	UsernameFile string `yaml:"username_file"`
	PasswordFile string `yaml:"password_file"`
	// CAFile holds the CA certificates the endpoint's must chain to.
	CAFile string `yaml:"ca_file"`
	// InsecureSkipVerify switches TLS verification off. Don't.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// Mounts maps datastore names to local mount points (vsphere).
	Mounts map[string]string `yaml:"mounts"`
	// Tags reads vSphere tags (vCenter only), for selections and groups
	// by tag.
	Tags bool `yaml:"tags"`

	// Timeout bounds each call to the hypervisor.
	Timeout time.Duration `yaml:"timeout"`
	// Select says which VMs are scanned.
	Select connector.Selection `yaml:"select"`
}

// Validate checks the configuration without connecting.
func (c Config) Validate() error {
	if c.Name == "" {
		return fmt.Errorf("connector: a name is required")
	}
	if err := c.Select.Validate(); err != nil {
		return fmt.Errorf("connector %s: %w", c.Name, err)
	}
	switch c.Type {
	case "libvirt":
		if c.URL != "" || c.UsernameFile != "" || c.PasswordFile != "" || len(c.Mounts) > 0 || c.Tags {
			return fmt.Errorf("connector %s: url, credentials, mounts and tags are vsphere settings", c.Name)
		}
	case "vsphere":
		if c.URL == "" || c.UsernameFile == "" || c.PasswordFile == "" {
			return fmt.Errorf("connector %s: vsphere needs url, username_file and password_file", c.Name)
		}
		if c.Socket != "" || len(c.PathMap) > 0 {
			return fmt.Errorf("connector %s: socket and path_map are libvirt settings", c.Name)
		}
	default:
		return fmt.Errorf("connector %s: type %q is not libvirt or vsphere", c.Name, c.Type)
	}
	return nil
}

// Open connects.
func Open(ctx context.Context, c Config, log *slog.Logger) (connector.Connector, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("connector", c.Name)
	switch c.Type {
	case "libvirt":
		return libvirt.Dial(ctx, libvirt.Config{Socket: c.Socket, PathMap: c.PathMap, Timeout: c.Timeout, Log: log})
	default:
		user, err := secret(c.UsernameFile)
		if err != nil {
			return nil, fmt.Errorf("connector %s: %w", c.Name, err)
		}
		pass, err := secret(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("connector %s: %w", c.Name, err)
		}
		return vsphere.Dial(ctx, vsphere.Config{URL: c.URL, Username: user, Password: pass, CAFile: c.CAFile,
			Insecure: c.InsecureSkipVerify, Mounts: c.Mounts, Tags: c.Tags, Timeout: c.Timeout, Log: log})
	}
}

// secret reads a credential file: its first line, which must not be empty.
func secret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("credentials: %w", err)
	}
	s, _, _ := strings.Cut(string(b), "\n")
	s = strings.TrimRight(s, "\r")
	if s == "" {
		return "", fmt.Errorf("credentials: %s is empty", path)
	}
	return s, nil
}
