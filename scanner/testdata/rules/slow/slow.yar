// Runs for minutes on any file over a few KiB: for a timeout test.
rule slow_loop
{
    condition:
        for all i in (0 .. filesize * 100000000) : ( uint8(i % filesize) <= 0xff )
}
