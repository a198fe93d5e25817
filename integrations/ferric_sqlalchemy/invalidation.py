"""What a committed transaction invalidates: rows, tables, or everything (per tenant)."""


class Invalidation:
    """Generations to replace once a transaction commits.

    ``rows[(tenant, table)]``: primary keys the ORM wrote (each row's generation
    changes; ``table`` is the row's base table). ``tables``: tables whose
    queries change (their table generation). ``bulk``: tables whose rows changed
    without being named (bulk, Core and text DML): table and bulk generations
    change, so every cached get of them goes too. ``everything``: text DML that
    named no table, which changes every region generation.
    """

    __slots__ = ("rows", "tables", "bulk", "everything")

    def __init__(self):
        self.rows: dict[tuple[bytes, str], set[tuple]] = {}
        self.tables: set[tuple[bytes, str]] = set()
        self.bulk: set[tuple[bytes, str]] = set()
        self.everything = False

    def __bool__(self):
        return bool(self.rows or self.tables or self.bulk or self.everything)

    def add_row(self, tenant: bytes, table: str, pk: tuple) -> None:
        self.rows.setdefault((tenant, table), set()).add(pk)
        self.tables.add((tenant, table))

    def add_table(self, tenant: bytes, table: str) -> None:
        self.tables.add((tenant, table))

    def add_bulk(self, tenant: bytes, table: str) -> None:
        self.bulk.add((tenant, table))
        self.tables.add((tenant, table))

    def merge(self, other: "Invalidation") -> None:
        for key, pks in other.rows.items():
            self.rows.setdefault(key, set()).update(pks)
        self.tables |= other.tables
        self.bulk |= other.bulk
        self.everything = self.everything or other.everything

    def clear(self) -> None:
        self.rows = {}
        self.tables = set()
        self.bulk = set()
        self.everything = False
