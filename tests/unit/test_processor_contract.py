"""The processor contract: type hints drive the plumbing, checked before any event arrives."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

import buildflow
import buildflow.io.base
from buildflow.errors import ConfigurationError, ProcessorDefinitionError, SchemaError
from buildflow.io import BigQueryTable, DuckDBTable, GCSFileEvent, GCSFileStream
from buildflow.processor import inspect_processor


@dataclasses.dataclass
class Row:
    name: str
    size: int


SOURCE = GCSFileStream(bucket_name="photos")
SINK = BigQueryTable(table_id="my-project.ds.rows")


class Good(buildflow.Processor):
    def source(self) -> GCSFileStream:
        return SOURCE

    def sink(self) -> BigQueryTable:
        return SINK

    def process(self, event: GCSFileEvent) -> Row:
        return Row(event.name, event.size)


def test_spec_derives_schema_and_dead_letter_destination() -> None:
    spec = inspect_processor(Good())
    assert spec.name == "Good"
    assert spec.row_type is Row
    assert [f.name for f in spec.schema.fields] == ["name", "size"]
    assert spec.batched is False
    assert spec.dead_letter == BigQueryTable("my-project.ds.buildflow_dead_letters")


def test_declarations_are_frozen_and_picklable() -> None:
    for decl in (SOURCE, SINK, DuckDBTable("ds.t")):
        assert pickle.loads(pickle.dumps(decl)) == decl
        with pytest.raises(dataclasses.FrozenInstanceError):
            decl.__setattr__("destroy_protection", False)


def test_class_without_process_fails_at_definition() -> None:
    with pytest.raises(ProcessorDefinitionError, match="neither process"):

        class Nothing(buildflow.Processor):
            def source(self) -> GCSFileStream:
                return SOURCE

            def sink(self) -> BigQueryTable:
                return SINK


def test_missing_return_hint_is_reported_with_fix() -> None:
    class NoHint(buildflow.Processor):
        def source(self) -> GCSFileStream:
            return SOURCE

        def sink(self) -> BigQueryTable:
            return SINK

        def process(self, event: GCSFileEvent):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(ProcessorDefinitionError, match=r"no return type hint.*-> MyRow"):
        inspect_processor(NoHint())


def test_wrong_event_type_hint_is_reported() -> None:
    class WrongEvent(buildflow.Processor):
        def source(self) -> GCSFileStream:
            return SOURCE

        def sink(self) -> BigQueryTable:
            return SINK

        def process(self, event: str) -> Row:
            return Row(event, 0)

    with pytest.raises(ProcessorDefinitionError, match="annotated str.*delivers GCSFileEvent"):
        inspect_processor(WrongEvent())


@pytest.mark.parametrize(
    "annotation, message",
    [("int", "does not name a row dataclass"), ("Row | OtherRow", "exactly one row dataclass")],
)
def test_return_type_must_be_one_dataclass(annotation: str, message: str) -> None:
    ns: dict[str, object] = {"Row": Row}
    exec(
        "import dataclasses\n"
        "@dataclasses.dataclass\nclass OtherRow:\n    x: int\n"
        f"def process(self, event) -> {annotation}: ...\n",
        ns,
    )
    cls = type(
        "Bad",
        (buildflow.Processor,),
        {"source": lambda self: SOURCE, "sink": lambda self: SINK, "process": ns["process"]},
    )
    with pytest.raises(ProcessorDefinitionError, match=message):
        inspect_processor(cls())


@dataclasses.dataclass
class BadRow:
    tags: dict[str, str]


def test_unmappable_row_is_a_schema_error_naming_the_processor() -> None:
    class P(buildflow.Processor):
        def source(self) -> GCSFileStream:
            return SOURCE

        def sink(self) -> BigQueryTable:
            return SINK

        def process(self, event: GCSFileEvent) -> BadRow:
            raise NotImplementedError

    with pytest.raises(SchemaError, match="processor P:.*tags"):
        inspect_processor(P())


def test_source_must_be_a_declaration() -> None:
    class P(buildflow.Processor):
        def source(self):  # type: ignore[no-untyped-def]
            return "gs://bucket"

        def sink(self) -> BigQueryTable:
            return SINK

        def process(self, event: GCSFileEvent) -> Row:
            raise NotImplementedError

    with pytest.raises(ProcessorDefinitionError, match="not a source declaration"):
        inspect_processor(P())


def test_batched_processor_return_hint() -> None:
    class Batched(buildflow.Processor):
        def source(self) -> GCSFileStream:
            return SOURCE

        def sink(self) -> BigQueryTable:
            return SINK

        def process_batch(self, events: list[GCSFileEvent]) -> list[Row | Exception]:
            return [Row(e.name, e.size) for e in events]

    spec = inspect_processor(Batched())
    assert spec.batched and spec.row_type is Row

    class NotAList(Batched):
        def process_batch(self, events: list[GCSFileEvent]) -> Row:  # type: ignore[override]
            raise NotImplementedError

    with pytest.raises(ProcessorDefinitionError, match="one result per event"):
        inspect_processor(NotAList())


def test_decorator_form_registers_a_function() -> None:
    app = buildflow.Node(app_dir=".")

    @app.processor(source=SOURCE, sink=SINK, max_batch_size=4)
    def sizes(event: GCSFileEvent) -> list[Row]:
        return [Row(event.name, event.size)]

    (proc,) = app.processors
    spec = inspect_processor(proc)
    assert spec.name == "sizes" and spec.row_type is Row and spec.max_batch_size == 4
    assert sizes.__name__ == "sizes"  # the function is returned unchanged


def test_node_rejects_classes_duplicates_and_non_processors() -> None:
    app = buildflow.Node(app_dir=".")
    with pytest.raises(ProcessorDefinitionError, match=r"pass an instance: app.add\(Good\(\)\)"):
        app.add(Good)  # type: ignore[arg-type]
    app.add(Good())
    with pytest.raises(ProcessorDefinitionError, match="already registered"):
        app.add(Good())
    with pytest.raises(ProcessorDefinitionError, match="takes a buildflow.Processor"):
        app.add(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: GCSFileStream(bucket_name="Bad_Bucket"),
        lambda: GCSFileStream(bucket_name="ok-bucket", ack_deadline_secs=5),
        lambda: BigQueryTable(table_id="just_a_table"),
        lambda: BigQueryTable(table_id="Bad Project.ds.t"),
        lambda: DuckDBTable(table="a.b.c"),
    ],
)
def test_declarations_validate_their_names(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="invalid|outside"):
        make()


def test_unknown_environment_lists_valid_ones() -> None:
    app = buildflow.Node(app_dir=".")
    with pytest.raises(ConfigurationError, match="'local', 'emulator', 'gcp'"):
        app.environment("prod")


@dataclasses.dataclass(frozen=True)
class NowhereStream(buildflow.io.base.SourceDeclaration):
    """A declaration no environment has a provider for."""

    event_type = GCSFileEvent

    def describe(self) -> str:
        return "NowhereStream()"


def test_declaration_without_provider_in_env_is_clear() -> None:
    from buildflow.errors import EnvironmentNotSupportedError

    class P(Good):
        def source(self) -> NowhereStream:  # type: ignore[override]
            return NowhereStream()

    app = buildflow.Node(app_dir=".")
    app.add(P())
    with pytest.raises(
        EnvironmentNotSupportedError, match="NowhereStream\\(\\) has no provider in the 'gcp'"
    ):
        app.bind(app.environment("gcp"))
