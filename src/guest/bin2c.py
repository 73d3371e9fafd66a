#!/usr/bin/env python3
"""bin2c.py INPUT OUTPUT NAME: embeds a file as `const unsigned char NAME[]` plus
`const unsigned long NAME_size` (used for the vDSO image inside stoke-vmm)."""
import sys

data = open(sys.argv[1], "rb").read()
name = sys.argv[3]
with open(sys.argv[2], "w") as out:
    out.write("/* Generated from %s by bin2c.py; do not edit. */\n" % sys.argv[1].split("/")[-1])
    out.write("extern const unsigned char %s[];\nextern const unsigned long %s_size;\n" %
              (name, name))
    out.write("const unsigned char %s[] __attribute__((aligned(4096))) = {\n" % name)
    for i in range(0, len(data), 12):
        out.write("\t" + " ".join("0x%02x," % b for b in data[i:i + 12]) + "\n")
    out.write("};\nconst unsigned long %s_size = %d;\n" % (name, len(data)))
