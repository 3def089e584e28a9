go test fuzz v1
[]byte("#!/bin/sh\x0aecho SNAPSCAN-PLANTED-2\x0a")
