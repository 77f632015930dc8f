"""case.txt of a parity case: key<TAB>value lines, # comments; shared by the reference scripts."""
import os


def read_spec(directory, defaults=None):
    """{key: value} of DIRECTORY/case.txt; a key it does not hold takes its value from
    defaults, if given there (a field added later, so that older case files keep their
    meaning)."""
    spec = dict(defaults or {})
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
