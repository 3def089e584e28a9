go test fuzz v1
[]byte("#!/bin/sh\necho SNAPSCAN-PLANTED-2\n")
