// Rules for the README demo. They find the files that
// testdata/sample-disk.sh plants in the sample VM disk.

rule EICAR_Test_File
{
    meta:
        description = "EICAR anti-virus test file"
        severity = "test"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar at 0
}

rule PHP_Eval_Webshell : webshell
{
    meta:
        description = "PHP one-liner that evaluates request data"
    strings:
        $eval = /@?eval\(\$_(POST|GET|REQUEST)\[/
    condition:
        filesize < 64KB and $eval
}

rule Coinminer_Stratum : miner
{
    meta:
        description = "Script that starts a cryptocurrency miner"
    strings:
        $stratum = "stratum+tcp://"
        $donate = "--donate-level"
    condition:
        all of them
}
