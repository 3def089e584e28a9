// A global rule gates its namespace: never cut.
global rule only_pe { condition: uint16(0) == 0x5a4d }
rule pe_marker {
	strings: $m = "snapscan-prefilter-marker"
	condition: $m and filesize < 10MB
}
