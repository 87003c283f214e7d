"""Command line: ``python -m ltlib <command>``.

sweep             train every run the notebooks of a profile need (see ``ltlib.sweep``)
notebook          execute one notebook under a profile: parameters validated first, output written on success only
sync-parameters   rewrite every notebook's parameters cell from its configuration class
index-figures     write figures/INDEX.md from the figures' sidecars
report            render the executed notebooks of a profile into a static site (see ``ltlib.report``)
readme            rewrite the README's results section from the committed results files
"""
from __future__ import annotations

import sys

ARGUMENTLESS = ("sync-parameters", "index-figures", "readme")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command in ARGUMENTLESS and rest:  # these take no arguments: never act on a mistyped or --help call
        described = next(line for line in __doc__.splitlines() if line.startswith(command + " "))
        if rest[0] in ("-h", "--help"):
            print(f"python -m ltlib {described}")
            return 0
        print(f"python -m ltlib {command} takes no arguments, not {' '.join(rest)!r} ({described.split(maxsplit=1)[1]})",
              file=sys.stderr)
        return 2
    if command == "sweep":
        from .sweep import main as sweep

        return sweep(rest)
    if command == "notebook":
        from .runner import main as notebook

        return notebook(rest)
    if command == "sync-parameters":
        from .runner import sync_parameters

        for path in sync_parameters():
            print("rewrote the parameters cell of", path)
        return 0
    if command == "index-figures":
        from .figures import write_index

        print("wrote", write_index())
        return 0
    if command == "readme":
        from .readme import update

        print("rewrote the results section of", update())
        return 0
    if command == "report":
        from .report import main as report

        return report(rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
