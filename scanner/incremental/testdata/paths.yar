rule named_evil { condition: filename == "renamed-evil.txt" }
rule evil_in_dir1 { strings: $a = "SNAPSCAN-EVIL-A" condition: $a and filepath contains "/dir1/" }
rule evil_tail { strings: $b = "SNAPSCAN-EVIL-TAIL" condition: $b }
