rule evil_a { strings: $a = "SNAPSCAN-EVIL-A" condition: $a }
rule evil_tail { strings: $b = "SNAPSCAN-EVIL-TAIL" condition: $b }
rule big_elf { condition: uint32(0) == 0x464c457f and filesize > 100KB }
rule small_text { condition: filesize < 64 and not uint32(0) == 0x464c457f }
