package scanner

// #cgo !yara_no_pkg_config pkg-config: yara
// #cgo yara_no_pkg_config LDFLAGS: -lyara -lm
// #include <yara.h>
import "C"

import "fmt"

// EngineVersion is the version of libyara snapscan was built against
// ("4.2.3"), for `snapscan version` and for comparing with a signature
// bundle's minimum engine version.
var EngineVersion = fmt.Sprintf("%d.%d.%d", C.YR_MAJOR_VERSION, C.YR_MINOR_VERSION, C.YR_MICRO_VERSION)
