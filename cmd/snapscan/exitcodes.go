package main

// Exit statuses, the same for every command (exitStatusHelp; the README's
// "Exit status" section is the same text, checked by TestExitStatusDocumented).
const (
	exitOK         = 0 // done; for a scan: clean and complete
	exitFindings   = 1 // something matched (wins over failures and gaps)
	exitFailed     = 2 // wrong usage, or nothing could be done
	exitIncomplete = 3 // nothing matched, but not everything was read
)

// exitStatusHelp ends every command's --help and is quoted in the README.
const exitStatusHelp = `Exit status (the same for every command):
  0  success; for scan, submit --wait and status ID: clean, and everything
     was scanned
  1  findings: something matched (scan, submit --wait, status ID), or
     findings listed at least one; findings win the exit status over failed
     targets and gaps, which are still reported (failures on stderr)
  2  wrong usage, or nothing could be done: no target could be scanned, the
     image or file could not be opened, the appliance could not be reached or
     refused the request, the scan failed or was cancelled
  3  incomplete: nothing matched, but not everything was read (files too
     large, unreadable, timed out, archive limits, an encrypted or unknown
     volume); never reported as clean. For ls and cat: some volume or file
     could not be read
`
