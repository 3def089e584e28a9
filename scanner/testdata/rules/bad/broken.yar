rule ok_one { condition: true }

rule broken
{
    strings:
        $a = "x"
    condition:
        $a and undefined_identifier
}
