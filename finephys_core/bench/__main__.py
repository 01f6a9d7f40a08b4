"""``python -m finephys_core.bench {pose,physics,sampler} [...]``: each prints its figures, then one JSON line."""
from __future__ import annotations

import sys
from importlib import import_module

BENCHES = ("pose", "physics", "sampler")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m finephys_core.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    return import_module(f".{argv[0]}", __package__).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
