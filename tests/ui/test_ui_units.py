"""Pure pieces of the UI: content sniffing, safe names, settings, the metrics state, row
cards, table references and a processor's preferred data set. No server, no network."""

from __future__ import annotations

import dataclasses
import datetime
import io
from pathlib import Path

import pytest
from PIL import Image

from buildflow.environment import Environment
from buildflow.errors import ConfigurationError
from buildflow.io import BigQueryTable, PostgresTable
from buildflow.runtime.base import ProcessorStats
from buildflow.schema import schema_from_dataclass
from buildflow.ui import UiConfig, UiState
from buildflow.ui.app import preferred_dataset
from buildflow.ui.state import percentile
from buildflow.ui.tables import RowView, dead_letters_sql, jsonable, latest_rows_sql, table_ref
from buildflow.ui.thumbnails import make_thumbnail
from buildflow.ui.uploads import safe_object_name, sniff_image
from tests.ui.toy_app import ShapeRow, labelled_app
from tests.ui.toy_app import app as toy_app


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (10, 6)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, ctype, ext",
    [
        ("JPEG", "image/jpeg", ".jpg"),
        ("PNG", "image/png", ".png"),
        ("GIF", "image/gif", ".gif"),
        ("WEBP", "image/webp", ".webp"),
        ("BMP", "image/bmp", ".bmp"),
        ("TIFF", "image/tiff", ".tif"),
    ],
)
def test_sniff_recognises_real_images_by_their_magic_bytes(fmt: str, ctype: str, ext: str) -> None:
    assert sniff_image(encoded(fmt)) == (ctype, ext)


def test_sniff_accepts_a_truncated_image_and_refuses_other_content() -> None:
    jpeg = encoded("JPEG")
    assert sniff_image(jpeg[:10]) == ("image/jpeg", ".jpg")  # the pipeline dead-letters it
    for data in (b"", b"hello", b"%PDF-1.7", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"RIFF0000WAVE"):
        assert sniff_image(data) is None, data


@pytest.mark.parametrize(
    "given, ext, expected",
    [
        ("cat.jpg", ".jpg", "cat.jpg"),
        ("cat.JPEG", ".jpg", "cat.JPEG"),
        ("cat", ".png", "cat.png"),  # no extension: the sniffed one
        ("cat.txt", ".jpg", "cat.txt.jpg"),
        ("photo.tmp", ".jpg", "photo.tmp.jpg"),  # the local bucket ignores *.tmp
        ("../../etc/cron.d/x.jpg", ".jpg", "x.jpg"),
        ("C:\\Users\\me\\a.png", ".png", "a.png"),
        ("/", ".jpg", "upload.jpg"),
        ("..", ".jpg", "upload.jpg"),
        (".bashrc", ".jpg", "bashrc.jpg"),
        ("...jpg", ".jpg", "jpg.jpg"),
        (None, ".gif", "upload.gif"),
        ("a\x00b\nc\u202e.jpg", ".jpg", "abc.jpg"),
        ("  spaced .png ", ".png", "spaced .png"),
        ("~.jpg", ".jpg", "upload.jpg"),
    ],
)
def test_safe_object_name(given: str | None, ext: str, expected: str) -> None:
    assert safe_object_name(given, ext) == expected


def test_safe_object_name_is_short_enough_for_any_file_system() -> None:
    name = safe_object_name("é" * 300 + ".jpeg", ".jpg")
    assert len(name.encode()) <= 200 and name.endswith(".jpeg")


def test_config_needs_a_token_off_loopback() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert UiConfig(host=host).loopback
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        with pytest.raises(ConfigurationError, match="--ui-token"):
            UiConfig(host=host)
        assert not UiConfig(host=host, token="x" * 16).loopback
    with pytest.raises(ConfigurationError, match="at least 16"):
        UiConfig(token="short")
    with pytest.raises(ConfigurationError, match="printable ASCII"):
        UiConfig(token="with space and more chars")
    with pytest.raises(ConfigurationError, match="max_upload_bytes"):
        UiConfig(max_upload_bytes=0)
    with pytest.raises(ConfigurationError, match="port"):
        UiConfig(port=70000)


def stats(events: int, rows: int, dead: int, latencies: list[float]) -> ProcessorStats:
    return ProcessorStats(
        name="p",
        events=events,
        rows=rows,
        dead_letters=dead,
        setup_calls=1,
        backlog=0,
        latencies_ms=list(latencies),
        metrics={"model_loads": 1, "note": "text is left out"},
    )


def test_state_snapshot_counts_rates_and_percentiles() -> None:
    state = UiState(latency_window=3, rate_window_s=2.0)
    snap = state.snapshot()
    assert snap["running"] is False and snap["processors"] == [] and snap["totals"]["rows"] == 0
    v0 = state.version
    lat: list[float] = []
    for t in range(1, 7):  # 10 events/s, a row each, latency 10*t ms
        lat.append(10.0 * t)
        state.update([stats(10 * t, 10 * t - 1, 1, lat)], float(t))
    assert state.version == v0 + 6 and state.counts("p") == (59, 1) and state.counts("q") == (0, 0)
    snap = state.snapshot()
    (p,) = snap["processors"]
    assert snap["running"] and snap["elapsed_s"] == 6.0
    assert p["events_per_s"] == pytest.approx(10.0)
    assert p["latency_ms"] == {"p50": 50.0, "p95": 60.0, "p99": 60.0, "window": 3}  # last 3 rows
    assert p["model_loads"] == 1 and p["replicas"] == 1 and p["metrics"] == {"model_loads": 1}
    assert snap["totals"] == {
        "events": 60,
        "rows": 59,
        "dead_letters": 1,
        "model_loads": 1,
        "replicas": 1,
        "backlog": 0,
    }
    assert [h["t"] for h in snap["history"]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # the first second of a run is counted over at least 1 s: no spike
    fresh = UiState()
    fresh.update([stats(1, 0, 0, [])], 0.05)
    assert fresh.snapshot()["processors"][0]["events_per_s"] == 1.0
    state.record_upload(2, 1)
    assert state.snapshot()["uploads"] == 2 and state.snapshot()["uploads_refused"] == 1


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([5.0], 99) == 5.0


def test_row_view_makes_cards_from_rows_as_the_sink_returns_them() -> None:
    view = RowView(schema_from_dataclass(ShapeRow))
    up = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    row = jsonable(
        {
            "image_name": "a.jpg",
            "upload": up,
            "classifications": [
                {"label": "landscape", "confidence": 0.9},
                {"label": "8x4", "confidence": 0.1},
            ],
            "event_id": "b/a.jpg#1",
            "model": "m",
            "processed_at": up + datetime.timedelta(milliseconds=700),
            "_event_id": "b/a.jpg#1",
            "_row_index": 0,
            "_written_at": up + datetime.timedelta(milliseconds=750),
        }
    )
    card = view.card(row)
    assert card == {
        "key": "b/a.jpg#1/0",
        "event_id": "b/a.jpg#1",
        "name": "a.jpg",
        "labels": [{"label": "landscape", "confidence": 0.9}, {"label": "8x4", "confidence": 0.1}],
        "uploaded_at": "2026-01-02T03:04:05+00:00",
        "written_at": "2026-01-02T03:04:05.750000+00:00",
        "latency_ms": 750.0,
        "fields": {"model": "m", "processed_at": "2026-01-02T03:04:05.700000+00:00"},
    }


def test_row_view_takes_a_scalar_label_and_ground_truth() -> None:
    @dataclasses.dataclass
    class Scalar:
        name: str
        label: str
        score: float
        true_label: str | None

    card = RowView(schema_from_dataclass(Scalar)).card(
        {"name": "x.png", "label": "Sneaker", "score": 0.8, "true_label": "Sneaker"}
    )
    assert card["labels"] == [{"label": "Sneaker", "confidence": 0.8}]
    assert card["fields"] == {"true_label": "Sneaker"} and card["latency_ms"] is None


def test_table_refs_and_queries_in_each_sinks_dialect(tmp_path: Path) -> None:
    from buildflow.io.registry import sink_provider

    local = Environment(name="local", state_dir=tmp_path)
    schema = schema_from_dataclass(ShapeRow)
    duck = table_ref(sink_provider(BigQueryTable(table_id="my-project.ds.t"), local), schema)
    assert duck is not None and duck.sql_name == '"ds"."t"' and duck.order_by == "_written_at"
    assert latest_rows_sql(duck, 5) == 'SELECT * FROM "ds"."t" ORDER BY _written_at DESC LIMIT 5'
    dead = table_ref(
        sink_provider(BigQueryTable(table_id="my-project.ds.buildflow_dead_letters"), local), None
    )
    assert dead is not None and dead.order_by == "failed_at"
    sql = dead_letters_sql(dead, "it's", 3)
    assert "WHERE processor = 'it''s' ORDER BY failed_at DESC LIMIT 3" in sql
    pg = table_ref(sink_provider(PostgresTable(dsn="postgresql://u@h/d", table="s.t"), local), schema)
    assert pg is not None and pg.sql_name == '"s"."t"'
    emulator = Environment(name="emulator", state_dir=tmp_path)
    bq = table_ref(sink_provider(BigQueryTable(table_id="my-project.ds.t"), emulator), schema)
    assert bq is not None and bq.sql_name == "`my-project.ds.t`" and bq.order_by == "processed_at"


def test_a_processor_names_its_preferred_data_set(tmp_path: Path) -> None:
    env = Environment(name="local", state_dir=tmp_path)
    (toy,) = toy_app.bind(env)
    assert preferred_dataset(toy) is None
    (labelled,) = labelled_app.bind(env)
    assert preferred_dataset(labelled) == "toy-shapes"


def test_thumbnails_of_good_and_bad_images() -> None:
    thumb = make_thumbnail(encoded("PNG", "RGBA"))
    assert thumb is not None and thumb[:3] == b"\xff\xd8\xff"
    assert make_thumbnail(encoded("JPEG")[:40]) is None
    assert make_thumbnail(b"not an image") is None
