"""One query text, one answer: ``buildflow query`` takes GoogleSQL in every environment.

The same rows are written to the ``local`` warehouse (DuckDB) and to the ``emulator``'s
BigQuery server (bqemulator), and every query the README prints, plus the array forms of
GoogleSQL (OFFSET, ORDINAL, SAFE_OFFSET, UNNEST ... WITH OFFSET, LEFT JOIN UNNEST), must
return the rows computed here from the data, in both."""

from __future__ import annotations

import asyncio
import datetime
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildflow.environment import Environment
from buildflow.errors import QueryError
from buildflow.io import BigQueryTable
from buildflow.io.base import OutputRecord, SinkProvider
from buildflow.io.google.bigquery import BigQueryTableProvider
from buildflow.io.local.duckdb_sink import DuckDBTableProvider
from buildflow.provisioning import apply, destroy, plan, plan_destroy
from buildflow.schema import row_to_record, schema_from_dataclass
from buildflow.sql import run_query, to_dialect
from schemas import Classification, ImageClassificationRow
from schemas.labelled_classification import LabelledClassificationRow

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
TOP = {  # image -> its top-k (label, confidence), most likely first
    "cat.jpg": [("tabby", 0.5), ("Egyptian cat", 0.25), ("lynx", 0.125)],
    "dog.jpg": [("German shepherd", 0.75), ("malinois", 0.125)],
    "kite.jpg": [("parachute", 0.625), ("kite", 0.3125), ("balloon", 0.03125)],
}
FASHION = [("Shirt", "Shirt"), ("Coat", "Shirt"), ("Bag", "Bag"), ("Bag", None)]  # (predicted, true)


def image_rows() -> list[ImageClassificationRow]:
    return [
        ImageClassificationRow(
            image_name=name,
            upload=T0,
            classifications=[Classification(lab, p, i) for i, (lab, p) in enumerate(top)],
            event_id=f"b/{name}#1",
            model="m",
            image_width=8,
            image_height=8,
            processing_ms=1.0,
            processed_at=T0,
        )
        for name, top in TOP.items()
    ]


def fashion_rows() -> list[LabelledClassificationRow]:
    return [
        LabelledClassificationRow(
            image_name=f"{i}.png",
            event_id=f"fashion/0/{i}",
            event_time=T0,
            model="checkpoint:x",
            predicted_label=pred,
            predicted_index=0,
            confidence=0.5,
            true_label=true,
            correct=None if true is None else pred == true,
            classifications=[Classification(pred, 0.5, 0)],
            processing_ms=1.0,
            processed_at=T0,
        )
        for i, (pred, true) in enumerate(FASHION)
    ]


TABLES: dict[str, tuple[type, Any]] = {
    "image_classification.predictions": (ImageClassificationRow, image_rows),
    "kafka_images.predictions": (ImageClassificationRow, image_rows),
    "fashion_mnist.predictions": (LabelledClassificationRow, fashion_rows),
}


def readme_queries() -> list[str]:
    """The SQL of every ``buildflow query APP "SQL"`` line of the README."""
    found = []
    for line in README.splitlines():
        m = re.match(r"\s*(?:\$ )?buildflow query (\S+) (\".*\")", line)
        if m:
            found.append(shlex.split(m.group(2))[0])
    return found


def expected(sql: str) -> list[tuple[Any, ...]]:
    """What each README query means, from the data above (in GoogleSQL's semantics)."""
    if "fashion_mnist" in sql:
        labelled = [(p, t) for p, t in FASHION if t is not None]
        right = sum(p == t for p, t in labelled)
        return [(len(labelled), right, round(right / len(labelled), 4))]
    if "event_id" in sql:  # the Kafka walkthrough: event_id, image_name, top1
        return sorted((f"b/{n}#1", n, top[0][0]) for n, top in TOP.items())
    return [(n, top[0][0], round(top[0][1], 3)) for n, top in sorted(TOP.items())]


def write_all(env: Environment, make: Any) -> dict[str, SinkProvider]:
    providers = {}
    for name, (row_type, rows) in TABLES.items():
        schema = schema_from_dataclass(row_type)
        provider = make(BigQueryTable(f"buildflow-local.{name}", destroy_protection=False), env)
        apply(plan(provider.resources(schema)))
        recs = [OutputRecord(f"ev{i}", 0, row_to_record(r, schema)) for i, r in enumerate(rows())]

        async def write(p: SinkProvider = provider, s: Any = schema, r: Any = recs) -> None:
            sink = p.open(s)
            assert await sink.write(r) is None
            await sink.close()

        asyncio.run(write())
        providers[name] = provider
    return providers


def table_of(sql: str) -> str:
    return next(t for t in TABLES if t in sql)


def canonical(rows: list[tuple[Any, ...]], sql: str) -> list[tuple[Any, ...]]:
    out = [tuple(float(v) if hasattr(v, "as_tuple") else v for v in r) for r in rows]
    return out if "ORDER BY" in sql.upper() else sorted(out, key=repr)


#: Array forms whose meaning differs between DuckDB and BigQuery, with their answer.
ARRAYS: list[tuple[str, list[tuple[Any, ...]]]] = [
    (
        "SELECT image_name, classifications[OFFSET(0)].label AS a, classifications[ORDINAL(2)].label AS b,"
        " classifications[SAFE_OFFSET(2)].label AS c, classifications[1].label AS d"
        " FROM `buildflow-local.image_classification.predictions` ORDER BY image_name",
        [
            (n, top[0][0], top[1][0], top[2][0] if len(top) > 2 else None, top[1][0])
            for n, top in sorted(TOP.items())
        ],
    ),
    (
        "SELECT image_name, c.label, rank FROM `buildflow-local`.image_classification.predictions,"
        " UNNEST(classifications) AS c WITH OFFSET AS rank WHERE rank > 0 ORDER BY image_name, rank",
        [(n, lab, i) for n, top in sorted(TOP.items()) for i, (lab, _) in enumerate(top) if i > 0],
    ),
    (
        "SELECT ARRAY_LENGTH(classifications) AS n, COUNTIF(c.confidence > 0.2) AS sure"
        " FROM image_classification.predictions LEFT JOIN UNNEST(classifications) AS c"
        " GROUP BY n ORDER BY n",
        [(2, 1), (3, 4)],
    ),
]


@pytest.fixture(scope="module")
def local_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SinkProvider]:
    env = Environment(name="local", state_dir=tmp_path_factory.mktemp("local"))
    return write_all(env, DuckDBTableProvider)


@pytest.fixture
def emulator_tables(stack_env: Any, tmp_path: Path) -> Iterator[dict[str, SinkProvider]]:
    env = Environment(name="emulator", state_dir=tmp_path)
    providers = write_all(env, BigQueryTableProvider)
    yield providers
    for name, (row_type, _) in TABLES.items():
        destroy(plan_destroy(providers[name].resources(schema_from_dataclass(row_type)), force=True))


def test_the_readme_has_googlesql_queries_only() -> None:
    queries = readme_queries()
    assert len(queries) >= 3
    for sql in queries:  # DuckDB-only forms that mean something else in BigQuery
        assert not re.search(r"classifications\[\d", sql), sql
        assert "AS t(" not in sql, sql


@pytest.mark.parametrize("sql", readme_queries())
def test_readme_queries_in_local(local_tables: dict[str, SinkProvider], sql: str) -> None:
    cols, rows = run_query(local_tables[table_of(sql)], sql)
    assert canonical(rows, sql) == canonical(expected(sql), sql)


@pytest.mark.parametrize(("sql", "want"), ARRAYS)
def test_array_forms_in_local(local_tables: dict[str, SinkProvider], sql: str, want: Any) -> None:
    assert canonical(run_query(local_tables[table_of(sql)], sql)[1], sql) == want


@pytest.mark.slow
def test_readme_and_array_queries_same_rows_in_emulator(emulator_tables: dict[str, SinkProvider]) -> None:
    for sql in readme_queries():
        cols, rows = run_query(emulator_tables[table_of(sql)], sql)
        assert canonical(rows, sql) == canonical(expected(sql), sql), sql
    for sql, want in ARRAYS:
        assert canonical(run_query(emulator_tables[table_of(sql)], sql)[1], sql) == want, sql


def test_column_names_are_bigquerys(local_tables: dict[str, SinkProvider]) -> None:
    cols, _ = run_query(
        local_tables["image_classification.predictions"],
        "SELECT image_name, classifications[OFFSET(0)].label, COUNT(*) OVER () "
        "FROM image_classification.predictions",
    )
    assert cols == ["image_name", "label", "f0_"]


def test_a_missing_table_names_the_tables_there_are(local_tables: dict[str, SinkProvider]) -> None:
    with pytest.raises(QueryError) as info:
        run_query(local_tables["image_classification.predictions"], "SELECT * FROM image_classification.nope")
    msg = str(info.value)
    assert "nope" in msg and "image_classification.predictions" in msg and "buildflow plan" in msg
    assert "pg_catalog" not in msg


def test_bad_sql_says_where() -> None:
    with pytest.raises(QueryError) as info:
        to_dialect("SELECT a, FROM t WHERE", "duckdb")
    assert "GoogleSQL" in str(info.value) and "column" in str(info.value)
    assert "\x1b" not in str(info.value)
