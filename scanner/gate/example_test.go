package gate_test

import (
	"fmt"

	"github.com/snapscan/snapscan/scanner/gate"
)

// An ELF file of 5 MB cannot match a rule for small PE files: the rule is
// cut from the sources that scan it. A rule whose condition depends on
// its strings alone is kept.
func Example() {
	src := []byte(`
rule small_pe {
	strings: $a = "evil"
	condition: uint16(0) == 0x5a4d and filesize < 300KB and $a
}
rule any_file {
	strings: $a = "evil"
	condition: $a
}`)
	set := gate.Parse([][]byte{src})
	elf := []byte("\x7fELF\x02\x01\x01\x00")
	p := set.Prune(set.Classify(5<<20, elf[:min(len(elf), set.HeadLen())]))
	fmt.Println("cut:", p.Cut[0])
	fmt.Printf("kept: %q\n", p.Sources[0])
	// Output:
	// cut: [small_pe]
	// kept: "\n\nrule any_file {\n\tstrings: $a = \"evil\"\n\tcondition: $a\n}"
}
