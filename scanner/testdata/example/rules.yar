// Rules of the scanner package's Example functions.
rule eicar_like : test
{
    meta:
        description = "the start of the EICAR test string"
    strings:
        $a = "X5O!P%@AP"
    condition:
        $a
}

rule shell_script
{
    condition:
        filetype == "SCRIPT" and extension == ".sh"
}
