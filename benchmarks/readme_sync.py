"""Copy every results file into its blocks in the README and docs/: `<!-- table:NAME -->` gets
results/NAME.md.

python benchmarks/readme_sync.py
"""

from __future__ import annotations

import re

from table import RESULTS, documents, update_readme


def main() -> None:
    names = dict.fromkeys(
        name
        for page in documents()
        for name in re.findall(r"<!-- table:([\w.-]+) -->", page.read_text())
    )
    for name in names:
        path = RESULTS / f"{name}.md"
        text = path.read_text() if path.is_file() else "Not run yet.\n"
        update_readme(name, text)
        print(f"{name}: {'from ' + path.name if path.is_file() else 'not run yet'}")


if __name__ == "__main__":
    main()
