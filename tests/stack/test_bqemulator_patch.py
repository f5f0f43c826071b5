"""The stack's fixes to bqemulator 1.4.0's Storage Write API (``infra/patches/bqemulator.py``):
applied once and only to that release, re-applied when an install lost them, and what they
fix, through the official client against the running (patched) emulator: an append to a
table with a REPEATED RECORD column, and a second request on one ``AppendRowsStream``
connection that omits ``write_stream`` as the API allows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from infra.patches import bqemulator as patch
from infra.services import bigquery as bq_service
from infra.stack import Stack, StackError

SERVICER = "bqemulator/grpc_api/write_servicer.py"
PATCHED = sorted({h.path for h in patch.HUNKS})


def pristine(path: str = SERVICER) -> str:
    """The release's own file at ``path``: the installed file with its hunks undone."""
    text = (bq_service.site_packages() / path).read_text()
    hunks = [h for h in patch.HUNKS if h.path == path]
    for hunk in reversed(hunks):
        text = text.replace(hunk.new, hunk.old)
    assert all(h.old in text for h in hunks)
    return text


def pristine_servicer() -> str:
    return pristine(SERVICER)


def fake_site(tmp: Path, version: str = patch.VERSION, text: str | None = None) -> Path:
    """A site-packages holding the release's patched files (``text``: the servicer's)."""
    site = tmp / "lib" / "python3.11" / "site-packages"
    for path in PATCHED:
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(pristine(path))
    if text is not None:
        (site / SERVICER).write_text(text)
    dist = site / f"bqemulator-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: bqemulator\nVersion: {version}\n")
    return site


def test_patch_applies_once_and_only_to_its_release(tmp_path: Path) -> None:
    site = fake_site(tmp_path / "ok")
    assert not patch.is_applied(site)
    assert len(patch.apply(site)) == len(patch.HUNKS)
    assert patch.is_applied(site)
    texts = {path: (site / path).read_text() for path in PATCHED}
    assert patch.apply(site) == [] and {p: (site / p).read_text() for p in PATCHED} == texts  # idempotent
    for path, text in texts.items():
        compile(text, path, "exec")  # still Python

    other = fake_site(tmp_path / "other", version="1.5.0")
    with pytest.raises(patch.PatchError, match=r"bqemulator==1\.4\.0.*has 1\.5\.0"):
        patch.apply(other)

    changed = fake_site(tmp_path / "changed", text="# someone else's write_servicer.py\n")
    with pytest.raises(patch.PatchError, match="hunk 1 .* does not match"):
        patch.apply(changed)


def test_install_repatches_a_venv_whose_stamp_matches_but_files_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install --force-reinstall bqemulator`` keeps the stamp and loses the fixes: the
    fast path checks the files too. The stamp does not name the patch: a venv shared with a
    checkout without it keeps one stamp, and the patch only adds fixes."""
    venv = tmp_path / "venv-bq"
    site = fake_site(venv)
    (venv / "bin").mkdir()
    (venv / "bin" / "bqemulator").write_text("#!/bin/sh\n")
    wanted = json.dumps(
        {
            "requirements": list(bq_service.REQUIREMENTS),
            "extension": bq_service.EXTENSION_SNIPPET,
        }
    )
    (venv / ".buildflow-installed").write_text(wanted)
    monkeypatch.setattr(bq_service, "VENV", venv)
    ran: list[list[str]] = []
    monkeypatch.setattr(bq_service, "run", lambda cmd, what, *a, **k: ran.append(list(cmd)) or "")

    assert bq_service.ensure_venv() == venv / "bin" / "bqemulator"
    assert patch.is_applied(site) and ran == []  # patched, nothing reinstalled
    text = (site / SERVICER).read_text()
    assert bq_service.ensure_venv() == venv / "bin" / "bqemulator"
    assert ran == [] and (site / SERVICER).read_text() == text  # nothing to do

    (venv / ".buildflow-installed").write_text(wanted.replace("bqemulator==", "bqemulator==0.9 "))
    (site / SERVICER).write_text(pristine_servicer())
    bq_service.ensure_venv()  # changed requirements: the install steps run again, then the patch
    assert any("pip" in c and "install" in c for c in ran) and patch.is_applied(site)
    assert (venv / ".buildflow-installed").read_text() == wanted

    (site / "bqemulator-1.4.0.dist-info" / "METADATA").write_text("Name: bqemulator\nVersion: 1.5.0\n")
    (site / SERVICER).write_text(pristine_servicer())
    with pytest.raises(StackError, match="port infra/patches/bqemulator.py"):
        bq_service.ensure_venv()


# --- what the patch fixes, on the running stack ---------------------------------------------


@pytest.fixture
def nested_table(local_stack: Stack) -> Iterator[str]:
    bq = bigquery.Client(
        project=local_stack.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=local_stack.bigquery_url),
    )
    dataset = f"{local_stack.project}.patch_{uuid.uuid4().hex[:10]}"
    bq.create_dataset(dataset)
    table = f"{dataset}.predictions"
    bq.create_table(
        bigquery.Table(
            table,
            schema=[
                bigquery.SchemaField("image", "STRING"),
                bigquery.SchemaField(
                    "top_k",
                    "RECORD",
                    mode="REPEATED",
                    fields=[bigquery.SchemaField("label", "STRING"), bigquery.SchemaField("score", "FLOAT")],
                ),
            ],
        )
    )
    try:
        yield table
    finally:
        bq.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


def test_official_append_rows_stream_writes_repeated_records_on_one_connection(
    local_stack: Stack, nested_table: str
) -> None:
    from google.cloud.bigquery_storage_v1 import BigQueryWriteClient, types, writer
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
        BigQueryWriteGrpcTransport,
    )
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FieldDescriptorProto
    row = descriptor_pb2.DescriptorProto(name="Row")
    row.field.add(name="image", number=1, label=fd.LABEL_OPTIONAL, type=fd.TYPE_STRING)
    row.field.add(name="top_k", number=2, label=fd.LABEL_REPEATED, type=fd.TYPE_MESSAGE, type_name="TopK")
    top_k = row.nested_type.add(name="TopK")
    top_k.field.add(name="label", number=1, label=fd.LABEL_OPTIONAL, type=fd.TYPE_STRING)
    top_k.field.add(name="score", number=2, label=fd.LABEL_OPTIONAL, type=fd.TYPE_DOUBLE)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto(name="row.proto", syntax="proto2", message_type=[row]))
    cls: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName("Row"))

    def rows(image: str) -> Any:
        msg = cls(image=image)
        msg.top_k.add(label="tabby", score=0.7)
        msg.top_k.add(label="tiger cat", score=0.2)
        return types.ProtoRows(serialized_rows=[msg.SerializeToString()])

    project, dataset, table = nested_table.split(".")
    stream = f"projects/{project}/datasets/{dataset}/tables/{table}/streams/_default"
    channel = grpc.insecure_channel(local_stack.bigquery_grpc_host)
    client = BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))
    template = types.AppendRowsRequest(
        write_stream=stream,
        proto_rows=types.AppendRowsRequest.ProtoData(writer_schema=types.ProtoSchema(proto_descriptor=row)),
    )
    appender = writer.AppendRowsStream(client, template)
    try:
        # as the helper is meant to be used: write_stream and the schema come from the
        # template in the first request only
        for image in ("cat.jpg", "dog.jpg"):
            request = types.AppendRowsRequest(proto_rows=types.AppendRowsRequest.ProtoData(rows=rows(image)))
            assert not request.write_stream
            appender.send(request).result(timeout=30)
    finally:
        appender.close()
        channel.close()

    bq = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=local_stack.bigquery_url),
    )
    sql = f"SELECT image, k.label, k.score FROM `{nested_table}`, UNNEST(top_k) AS k ORDER BY 1, 3 DESC"
    got = [tuple(r.values()) for r in bq.query(sql).result()]
    assert got == [
        ("cat.jpg", "tabby", 0.7),
        ("cat.jpg", "tiger cat", 0.2),
        ("dog.jpg", "tabby", 0.7),
        ("dog.jpg", "tiger cat", 0.2),
    ]
