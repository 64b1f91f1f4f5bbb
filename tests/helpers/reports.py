"""Reading printed reports back: ``hierot.report.format_report``'s tables as keys."""


def read_report(text: str, columns: tuple[str, ...] = ("crm", "hie")) -> dict[str, tuple[str, str]]:
    """``{key: (family, cell)}`` read back from ``format_report``'s tables: a cell of column
    ``value`` is its row's key, of a decoding column ``<split>/<column>/<name>``, of any other
    column ``<row>/<column>``. A key printed twice fails."""
    found: dict[str, tuple[str, str]] = {}
    for table in text.split("\n\n"):
        header, dashes, *rows = table.splitlines()
        spans, start = [], 0
        for dash in dashes.split("  "):  # column i spans its dashes
            spans.append((start, start + len(dash)))
            start += len(dash) + 2
        family, *heads = (header[a:b].strip() for a, b in spans)
        for line in rows:
            name, *cells = (line[a:b].strip() for a, b in spans)
            for head, cell in zip(heads, cells, strict=True):
                if not cell:
                    continue
                if head == "value":
                    key = name
                elif head in columns:
                    split, rest = name.split("/", 1)
                    key = f"{split}/{head}/{rest}"
                else:
                    key = f"{name}/{head}"
                assert key not in found, key
                found[key] = (family, cell)
    return found
