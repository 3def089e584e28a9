package scanner

import (
	"bufio"
	"bytes"
	"io"
	"io/fs"
	"strings"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// maxPasswd bounds how much of a guest's /etc/passwd is read.
const maxPasswd = 4 << 20

// owners maps numeric owners, as Linux file systems record them (ext4 and
// XFS give the uid as text), to user names, from the /etc/passwd of the
// target's volumes: rules test owner == "root", never owner == "0". The
// first volume that has an /etc/passwd (the root file system) names the
// owners of every volume of the target (/home on its own partition).
type owners map[string]string

func readOwners(t Target) owners {
	for _, v := range t.Volumes {
		if v.FS == nil {
			continue
		}
		f, err := v.FS.Open("etc/passwd")
		if err != nil {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(f, maxPasswd))
		f.Close()
		if err != nil {
			continue
		}
		m := owners{}
		s := bufio.NewScanner(bytes.NewReader(b))
		for s.Scan() {
			fields := strings.Split(s.Text(), ":")
			if len(fields) >= 3 && fields[0] != "" && !strings.HasPrefix(fields[0], "#") {
				if _, dup := m[fields[2]]; !dup {
					m[fields[2]] = fields[0]
				}
			}
		}
		return m
	}
	return nil
}

// of returns the owner name of a file: the file system's own name where it
// records one, the guest's user name for a numeric owner, else "" (a uid
// the guest does not name, or no /etc/passwd on the target).
func (o owners) of(info fs.FileInfo) string {
	ow, ok := info.Sys().(vfs.Owner)
	if !ok {
		return ""
	}
	id := ow.Owner()
	if id == "" || strings.Trim(id, "0123456789") != "" {
		return id // already a name
	}
	return o[id]
}
