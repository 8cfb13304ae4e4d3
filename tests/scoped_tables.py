"""Table B of the scoped-restore tests (CLI: tests/matrixone/test_scoped_restore.py; operator:
tests/operator/test_e2e_scoped.py): a composite primary key, a secondary index, NULLs, decimals, JSON,
blobs and comments; `b_rows(n)` fills it with n generated rows, ODD_ROW is one of awkward values."""

from __future__ import annotations

ROWS = 20000
B_DDL = """create table shop.b (
  region varchar(16) not null, id bigint not null, amount decimal(18,4) default null comment 'money',
  note varchar(64) default 'none', doc json, payload blob, ratio double, created datetime(6),
  primary key (region, id), key by_amount (amount)) comment 'table B'"""


def b_rows(rows: int) -> str:
    return f"""insert into shop.b select case result % 3 when 0 then 'eu' when 1 then 'us' else 'ap' end, result,
  case when result % 7 = 0 then null else result * 1.2345 end,
  case when result % 5 = 0 then null else concat('n-', result) end,
  case when result % 4 = 0 then null else concat('{{"i": ', result, ', "tags": ["a", "b"]}}') end,
  case when result % 6 = 0 then null else cast(concat('blob-', result) as blob) end,
  result / 7.0, date_add('2024-01-01 00:00:00', interval result second)
  from generate_series(1, {rows}) g"""


B_ROWS = b_rows(ROWS)
ODD_ROW = ("x", 1, "-0.0001", "it's `q` \\ %s", '{"k": "\\u00e9\\n"}', bytes(range(256)), 0.1 + 0.2,
           "2024-02-29 23:59:59.999999")
