// Planted strings, tags and repeated metadata keys.
rule planted_marker : test planted
{
    meta:
        description = "SNAPSCAN-PLANTED-1 test string"
        hash = "first"
        hash = "second"
        score = 70
        active = true
    strings:
        $a = "SNAPSCAN-PLANTED-1"
    condition:
        $a
}

rule planted_script
{
    strings:
        $a = "SNAPSCAN-PLANTED-2"
    condition:
        $a and uint16(0) == 0x2123
}

private rule is_tiny
{
    condition:
        filesize < 64
}

rule tiny_and_planted
{
    condition:
        is_tiny and planted_script
}

rule empty_file
{
    condition:
        filesize == 0
}
