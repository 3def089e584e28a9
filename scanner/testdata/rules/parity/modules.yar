import "pe"
import "elf"
import "math"
import "hash"

rule pe_signed
{
    condition:
        pe.is_pe and pe.number_of_signatures > 0
}

rule pe_sections
{
    condition:
        uint16(0) == 0x5a4d and pe.number_of_sections >= 3 and pe.entry_point > 0
}

rule elf_x86_64_dyn
{
    condition:
        elf.type == elf.ET_DYN and elf.machine == elf.EM_X86_64
}

rule elf_has_dynsym
{
    condition:
        for any s in elf.sections : ( s.name == ".dynsym" )
}

rule high_entropy
{
    condition:
        filesize > 1024 and math.entropy(0, filesize) > 7.0
}

rule planted_by_hash
{
    condition:
        hash.sha256(0, filesize) == "c7804f51a146d80e92b58a639bbc54911f44f21473a9eda3baaef8ed947d1699"
}

rule elf_magic_md5
{
    condition:
        filesize >= 4 and hash.md5(0, 4) == "d1531b1622de54fe3a0187c3344600e9"
}
