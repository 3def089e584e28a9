// Every external variable that snapscan sets per file.
rule ext_filename
{
    condition:
        filename == "README" or filename == "Report.PDF"
}

rule ext_filepath
{
    condition:
        filepath matches /^\/text\/[^\/]+$/ and filesize < 100
}

rule ext_extension_pdf
{
    condition:
        extension == ".pdf"
}

rule ext_extension_exe
{
    condition:
        extension == ".exe"
}

rule ext_filetype_elf
{
    condition:
        filetype == "ELF"
}

rule ext_filetype_archive
{
    condition:
        filetype == "ZIP" or filetype == "GZIP" or filetype == "XZ" or filetype == "ZSTD" or filetype == "BZIP2"
}

rule ext_filetype_script
{
    condition:
        filetype == "SCRIPT"
}

rule ext_owner_unknown
{
    condition:
        owner == "" and filepath contains "/bin/"
}

rule ext_no_extension
{
    condition:
        extension == "" and filename != ""
}
