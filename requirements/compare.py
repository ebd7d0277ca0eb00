"""`make test-latest`'s report: the packages whose newest allowed release differs from the lock.

    python requirements/compare.py LOCK FREEZE    # FREEZE: `pip freeze` of the latest environment
"""

import re
import sys


def pins(path: str) -> dict[str, str]:
    """{normalized name: version} of the `name==version` lines of a lock or a `pip freeze`."""
    out = {}
    for line in open(path, encoding="utf-8"):
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match:
            out[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return out


def main(lock: str, freeze: str) -> int:
    locked, latest = pins(lock), pins(freeze)
    changed = [f"  {name}: {locked.get(name, '(not in the lock)')} -> {version}"
               for name, version in sorted(latest.items()) if locked.get(name) != version]
    print(f"newest allowed releases that differ from {lock}:")
    print("\n".join(changed) if changed else "  none: the lock is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
