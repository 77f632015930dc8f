"""case.txt of a parity case: key<TAB>value lines, # comments; shared by the reference scripts."""
import os


def read_spec(directory):
    spec = {}
    with open(os.path.join(directory, "case.txt")) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("\t")
            if not sep:
                raise SystemExit("%s/case.txt: malformed line %r" % (directory, line))
            spec[key] = value
    return spec
