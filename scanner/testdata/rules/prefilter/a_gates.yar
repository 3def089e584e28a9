// Rules whose conditions the pre-filter decides from a file's size and
// header (see package gate), for TestPrefilter: each holds the marker, so
// that only its gate tells whether it matches.
rule pe_small {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint16(0) == 0x5a4d and filesize < 100KB and $m
}
rule pe_any {
	strings: $m = "snapscan-prefilter-marker"
	condition: ( uint16(0) == 0x5A4D and $m )
}
rule not_pe {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint16(0) != 0x5a4d and $m
}
rule not_pe_group {
	strings: $m = "snapscan-prefilter-marker"
	condition: not (uint16(0) == 0x5a4d) and $m
}
rule elf_be {
	strings: $m = "snapscan-prefilter-marker"
	condition: uint32be(0) == 0x7f454c46 and $m
}
rule big {
	strings: $m = "snapscan-prefilter-marker"
	condition: filesize > 2MB and $m
}
rule at_least_1mb {
	strings: $m = "snapscan-prefilter-marker"
	condition: filesize >= 1MB and $m
}
rule at_most_1mb {
	strings: $m = "snapscan-prefilter-marker"
	condition: filesize <= 1MB and $m
}
rule exactly {
	strings: $m = "snapscan-prefilter-marker"
	condition: filesize == 0x20000 and $m
}
rule small_or_pe {
	strings: $m = "snapscan-prefilter-marker"
	condition: (filesize < 64KB or uint16(0) == 0x5a4d) and $m
}
private rule is_pe { condition: uint16(0) == 0x5a4d }
rule via_private {
	strings: $m = "snapscan-prefilter-marker"
	condition: is_pe and $m
}
rule strings_only {
	strings: $m = "snapscan-prefilter-marker"
	condition: $m
}
