// Path-reading rules, compiled apart (Rules.PathSplit), pruned too.
rule named_pe {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint16(0) == 0x5a4d and filename endswith ".exe" and $m
}
rule named_any {
	strings: $m = "snapscan-prefilter-marker"
	condition: extension == ".exe" and $m
}
rule named_pe_small {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint16(0) == 0x5a4d and filesize < 100KB and filename contains "pe" and $m
}
rule named_big {
	strings: $m = "snapscan-prefilter-marker"
	condition: filesize > 2MB and filepath contains "/" and $m
}
rule named_not_pe {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint16(0) != 0x5a4d and filename startswith "text" and $m
}
rule named_elf {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint32be(0) == 0x7f454c46 and filename != "" and $m
}
rule named_pe_2 {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint16(0) == 0x5a4d and filename endswith ".bin" and $m
}
rule named_pe_3 {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint16(0) == 0x5a4d and extension == ".bin" and $m
}
