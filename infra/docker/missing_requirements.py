"""Print the lines of a requirements file that the installed Python does not satisfy.

Used by the Dockerfile so pip runs only when the base image lacks something: the offline Debian
base has every requirement as a Debian package but no pip and no network during the build.
Understands `name` and `name>=version` lines, which is all requirements.txt uses.
"""
import importlib.metadata as metadata
import re
import sys


def version_tuple(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def satisfied(requirement):
    name, _, minimum = requirement.partition(">=")
    try:
        installed = metadata.version(name.strip())
    except metadata.PackageNotFoundError:
        return False
    return not minimum or version_tuple(installed) >= version_tuple(minimum)


if __name__ == "__main__":
    lines = [line.split("#")[0].strip() for line in open(sys.argv[1])]
    print(" ".join(line for line in lines if line and not satisfied(line)))
