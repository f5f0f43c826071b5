"""Hostile input, end to end: the real app (main.py's ImageClassificationProcessor, the
real pretrained model) in the ``local`` environment (a folder bucket -> DuckDB), run
through the real CLI over one bucket that holds, side by side, every kind of bad file
(truncated, empty, random bytes, a PDF named .png, decompression bombs, a 50 MB file, a
name that is not UTF-8), good photos in every format Pillow commonly reads, unicode and
very long object names, and symbolic links that point out of the bucket.

Each bad file must give exactly one dead-letter record whose reason names the problem;
each good file exactly one row, classified as the cat it is, with probabilities close to
the lossless reference (so a mis-converted CMYK or an ignored EXIF rotation fails, not
just an unreadable file); nothing outside the bucket is ever read or written.

Malformed Kafka payloads and Pub/Sub messages without notification attributes are covered
elsewhere, not repeated here: tests/integration/test_kafka_e2e.py
(test_poison_messages_are_dead_lettered_and_the_partition_moves_on: bad JSON, bad base64,
not an image, over max_message_bytes, then a good message), tests/unit/test_google_decoding.py
(test_message_without_notification_attributes_is_dead_lettered,
test_malformed_payload_is_dead_lettered), tests/unit/test_runtime.py
(test_messages_the_source_cannot_decode_are_dead_lettered_without_process) and
tests/integration/test_emulator_e2e.py (test_pubsub_messages_carrying_or_pointing_at_images:
an empty message is dead-lettered, its neighbours classified).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from buildflow.events import BlobReader, GCSFileEvent, PubSubMessageEvent
from buildflow.testing import gcs_file_event, run_processor
from models.labels import CAT_CLASS_INDICES
from tests.models import sample_images as samples

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUILDFLOW = [sys.executable, "-m", "buildflow.cli"]
BUCKET = "buildflow-images"
TABLE = "image_classification.predictions"
DEAD = "image_classification.buildflow_dead_letters"
MB50 = 50_000_000


def buildflow(*args: str, state: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI against ``state`` (the ``local`` environment), as a user would."""
    env = {**os.environ, "BUILDFLOW_LOG_LEVEL": "info", "COLUMNS": "200"}
    env.pop("BUILDFLOW_ENV", None)
    proc = subprocess.run(
        [*BUILDFLOW, *args, "--state-dir", str(state)],
        cwd=REPO,
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def query(sql: str, state: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        buildflow("query", "main:app", sql, "--format", "json", state=state).stdout
    )
    return rows


def files_under(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (not following links), with its bytes."""
    return {
        str(p): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not any(q.is_symlink() for q in p.parents)
    }


# --- the bucket -------------------------------------------------------------------------

# Uploaded through `buildflow upload` (unicode, a 255-byte name, a ~1000-character path).
UNICODE_DIR = "café/"
UNICODE = "猫 ☕.jpg"
NAME_255 = "x" * 251 + ".jpg"  # a path component of 255 bytes: the ext4/tmpfs maximum
LONG_DIR = "/".join(["d" * 199] * 4) + "/"  # 800 characters of folders
LONG_FILE = "n" * 196 + ".jpg"  # ... and a file: the object name is 1000 characters
NOT_UTF8 = b"latin1-caf\xe9.jpg"  # a Latin-1 file name: not UTF-8, so no GCS object name


def good_files() -> dict[str, bytes]:
    """Object name -> bytes of the good files written straight into the bucket."""
    png = samples.encode(samples.chelsea_image(), "PNG")
    return {
        "upload/chelsea.png": png,  # the lossless reference
        "upload/chelsea.jpg": samples.jpeg(),
        "upload/chelsea.gif": samples.gif(),
        "upload/animated-cat-then-coffee.gif": samples.animated_gif_then_coffee(),
        "upload/chelsea.webp": samples.webp(),
        "upload/chelsea.bmp": samples.bmp(),
        "upload/chelsea.tiff": samples.tiff(),
        "upload/gray16.png": samples.gray16_png(),
        "upload/palette.png": samples.palette_png(),
        "upload/cmyk.jpg": samples.cmyk_jpeg(),
        "upload/gray.jpg": samples.gray_jpeg(),
        "upload/exif-rotated.jpg": samples.exif_upright_jpeg(6),
        "upload/png-named.jpg": png,  # the content decides the format, not the name
        "upload/large-camera-photo.jpg": samples.large_jpeg(),  # ~16 MB, 23 MP
    }


# Object name -> (bytes, error_type, pattern the reason must match).
def bad_files() -> dict[str, tuple[bytes, str, str]]:
    # seeded: some random prefixes ("BM", 1 in 65536) look like a BMP header
    noise = random.Random(20261122).randbytes(65_536)
    return {
        "upload/truncated.jpg": (samples.truncated_jpeg(), "TruncatedImageError", r"JPEG .* truncated"),
        "upload/empty.jpg": (b"", "EmptyImageError", r"empty \(0 bytes\)"),
        "upload/random.jpg": (
            noise,
            "UnsupportedImageError",
            r"cannot identify an image format in 65536 bytes",
        ),
        "upload/document.png": (
            samples.pdf_like(),
            "UnsupportedImageError",
            r"cannot identify an image format .* starting b'%PDF-1\.7",
        ),
        "upload/bomb.png": (
            samples.decompression_bomb_png(),
            "ImageTooLargeError",
            r"400000000 pixels \(PNG 20000x20000\), over the decompression-bomb limit",
        ),
        "upload/header-bomb.png": (
            samples.header_only_png(),
            "ImageTooLargeError",
            r"10000000000 pixels \(PNG 100000x100000\), over the decompression-bomb limit",
        ),
        # A valid JPEG padded to 50 MB: only the size limit stops it.
        "upload/padded-50mb.jpg": (
            samples.padded_jpeg(MB50),
            "ImageFileTooLargeError",
            rf"image file is {MB50} bytes .*over the limit of {32 * 2**20} bytes .*max_bytes",
        ),
    }


def top(row: dict[str, Any]) -> list[int]:
    return [c["class_index"] for c in row["classifications"]]


def probs(row: dict[str, Any]) -> dict[int, float]:
    return {c["class_index"]: c["confidence"] for c in row["classifications"]}


def max_diff(row: dict[str, Any], ref: dict[str, Any]) -> float:
    """Largest confidence difference over the reference's top 3 classes (both rows must
    have them in their top 5)."""
    p, q = probs(row), probs(ref)
    missing = [c for c in top(ref)[:3] if c not in p]
    assert not missing, f"{row['image_name']}: classes {missing} of the reference not in {top(row)}"
    return max(abs(p[c] - q[c]) for c in top(ref)[:3])


def test_hostile_bucket_gives_one_dead_letter_per_bad_file_and_one_right_row_per_good_one(
    tmp_path: Path,
) -> None:
    # Linux file systems (ext4, xfs, btrfs, tmpfs): 255 bytes a name, 4096 a path.
    assert os.pathconf(tmp_path, "PC_NAME_MAX") >= 255 and os.pathconf(tmp_path, "PC_PATH_MAX") >= 4096
    state = tmp_path / "state"
    buildflow("plan", "main:app", "--yes", state=state)
    bucket = state / "buckets" / BUCKET

    good = good_files()
    bad = bad_files()
    for name, data in [*good.items(), *((n, d) for n, (d, _, _) in bad.items())]:
        (bucket / name).parent.mkdir(parents=True, exist_ok=True)
        (bucket / name).write_bytes(data)
    # A name that is not UTF-8 (a valid photo): os.walk gives it with surrogates, which no
    # sink can store; it is dead-lettered under an escaped name.
    (bucket / "upload" / os.fsdecode(NOT_UTF8)).write_bytes(samples.jpeg())
    not_utf8_name = "upload/latin1-caf\\xe9.jpg"

    # Through the CLI: unicode names, a 255-byte component, a 1000-character path.
    jpeg = samples.jpeg()
    uploads = tmp_path / "to-upload"
    uploads.mkdir()
    for name in (UNICODE, NAME_255, LONG_FILE):
        (uploads / name).write_bytes(jpeg)
    buildflow(
        "upload",
        "main:app",
        str(uploads / UNICODE),
        str(uploads / NAME_255),
        "--prefix",
        UNICODE_DIR,
        state=state,
    )
    buildflow("upload", "main:app", str(uploads / LONG_FILE), "--prefix", LONG_DIR, state=state)
    uploaded = [UNICODE_DIR + UNICODE, UNICODE_DIR + NAME_255, LONG_DIR + LONG_FILE]
    assert len(LONG_DIR + LONG_FILE) == 1000 and len(NAME_255.encode()) == 255
    for name in uploaded:
        assert (bucket / name).read_bytes() == jpeg
        good[name] = jpeg

    # Symbolic links to a photo and a folder outside the bucket: never read.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret-cat.jpg").write_bytes(jpeg)
    os.symlink(outside / "secret-cat.jpg", bucket / "upload" / "leak.jpg")
    os.symlink(outside, bucket / "leakdir")
    outside_before = files_under(tmp_path / "outside")

    summary_path = tmp_path / "summary.json"
    run = buildflow(
        "run", "main:app", "--until-idle", "--no-progress", "--summary-json", str(summary_path), state=state
    )

    summary = json.loads(summary_path.read_text())
    n_bad = len(bad) + 1  # + the name that is not UTF-8
    assert summary["stop_reason"] == "until-idle", run.stderr
    assert (summary["events"], summary["rows"], summary["dead_letters"]) == (
        len(good) + n_bad,
        len(good),
        n_bad,
    )
    (proc,) = summary["processors"]
    assert proc["batches"] < proc["events"]  # good and bad files shared micro-batches
    assert proc["metrics"]["model_loads"] == 1 and proc["setup_calls"] == 1
    assert proc["sink_retries"] == 0, run.stderr  # no row the sink cannot store (e.g. a bad name)
    assert "Traceback" not in run.stderr

    # --- one row per good file, classified as the cat it is ---
    rows = query(f"SELECT * FROM {TABLE}", state)
    assert sorted(r["image_name"] for r in rows) == sorted(good)  # exactly one each
    by_name = {r["image_name"]: r for r in rows}
    for name, r in by_name.items():
        assert top(r)[0] in CAT_CLASS_INDICES, f"{name}: top-1 {r['classifications'][0]}"
        assert len(r["classifications"]) == 5
    for name in good:
        if not name.startswith("upload/large"):
            assert (by_name[name]["image_width"], by_name[name]["image_height"]) == (451, 300), name

    png, jpg = by_name["upload/chelsea.png"], by_name["upload/chelsea.jpg"]
    gif = by_name["upload/chelsea.gif"]
    # name -> (reference row, bound on max_diff); the comments give the measured max_diff.
    close = {
        # Bit-identical pixels (0.0): only batch composition may move the numbers.
        "upload/chelsea.bmp": (png, 0.002),
        "upload/chelsea.tiff": (png, 0.002),
        "upload/png-named.jpg": (png, 0.002),
        **{name: (jpg, 0.002) for name in uploaded},
        # Lossy encodings of the same photo.
        "upload/chelsea.jpg": (png, 0.05),  # 0.028
        "upload/chelsea.webp": (png, 0.12),  # 0.080
        "upload/chelsea.gif": (png, 0.09),  # 0.059 (256-colour palette)
        "upload/palette.png": (png, 0.09),  # 0.059
        # Frame 0 is the cat of chelsea.gif; frame 1 (coffee) would be "espresso".
        "upload/animated-cat-then-coffee.gif": (gif, 0.01),  # 0.0
        # CMYK read back inverted gives 0.047, with channels swapped 0.12.
        "upload/cmyk.jpg": (png, 0.02),  # 0.001
        # Stored turned 90 degrees: classified unturned it gives 0.26 (and is 300x451).
        "upload/exif-rotated.jpg": (jpg, 0.03),  # 0.004
        # 16-bit gray scaled to 8 bits is the gray JPEG's photo, less JPEG noise.
        "upload/gray16.png": (by_name["upload/gray.jpg"], 0.05),  # 0.020
    }
    for name, (ref, tol) in close.items():
        diff = max_diff(by_name[name], ref)
        assert diff <= tol, f"{name}: {by_name[name]['classifications']} vs {ref['classifications']}"
    # Gray photos lose the colour, not the cat: the top 3 are all cats.
    for name in ("upload/gray.jpg", "upload/gray16.png"):
        assert set(top(by_name[name])[:3]) <= set(CAT_CLASS_INDICES), by_name[name]["classifications"]

    # --- one dead letter per bad file, saying what is wrong ---
    dead = query(f"SELECT * FROM {DEAD}", state)
    assert sorted(d["object_name"] for d in dead) == sorted([*bad, not_utf8_name])  # exactly one each
    by_object = {d["object_name"]: d for d in dead}
    for name, (_, error_type, pattern) in bad.items():
        d = by_object[name]
        assert (d["error_type"], d["stage"], d["attempts"]) == (error_type, "process", 1), d
        assert d["reason"].startswith(f"{error_type}: ") and re.search(pattern, d["reason"]), d["reason"]
        assert d["event_id"].startswith(f"{BUCKET}/{name}#")
        assert f"dead-lettered {name}" in run.stderr  # a warning line each
    d = by_object[not_utf8_name]
    assert (d["error_type"], d["stage"]) == ("ValueError", "decode"), d
    assert "is not valid UTF-8" in d["reason"] and "rename the file" in d["reason"]

    # --- the links out of the bucket were never followed ---
    names = [r["image_name"] for r in rows] + [d["object_name"] for d in dead]
    assert not [n for n in names if "leak" in n or "secret" in n]
    assert "leak" not in run.stderr and "secret" not in run.stderr
    assert files_under(tmp_path / "outside") == outside_before

    # A second run finds nothing new: every event was acked, bad ones included.
    again = tmp_path / "again.json"
    buildflow("run", "main:app", "--until-idle", "--no-progress", "--summary-json", str(again), state=state)
    assert json.loads(again.read_text())["events"] == 0


def test_upload_refuses_object_names_outside_the_bucket_with_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bucket = state / "buckets" / BUCKET
    bucket.mkdir(parents=True)  # what `plan` creates for the bucket; upload needs nothing else
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cat.jpg").write_bytes(b"outside, must stay as it is")
    os.symlink(outside, bucket / "linkdir")
    os.symlink(outside / "cat.jpg", bucket / "cat.jpg")
    photo = tmp_path / "photos" / "cat.jpg"
    photo.parent.mkdir()
    photo.write_bytes(samples.jpeg())

    cases = {
        "../": "'..' component",
        "sub/../../": "'..' component",
        str(tmp_path) + "/": "absolute path",
        "linkdir/": "resolves outside the bucket folder",
        "": "resolves outside the bucket folder",  # cat.jpg is a link out of the bucket
        "d" * 300 + "/": "too long for the local bucket's file system",
    }
    before = files_under(tmp_path)
    for prefix, why in cases.items():
        proc = buildflow("upload", "main:app", str(photo), "--prefix", prefix, state=state, check=False)
        assert proc.returncode == 1, (prefix, proc.stdout, proc.stderr)
        err = " ".join(proc.stderr.split())  # rich wraps long lines
        assert err.startswith("error: object name ") and why in err, (prefix, proc.stderr)
        assert "Traceback" not in proc.stderr and "uploaded" not in proc.stdout
    assert files_under(tmp_path) == before  # nothing written anywhere, inside or out

    ok = buildflow("upload", "main:app", str(photo), "--prefix", "in/", state=state)
    assert f"-> {bucket / 'in' / 'cat.jpg'}" in " ".join(ok.stdout.split())
    assert (bucket / "in" / "cat.jpg").read_bytes() == photo.read_bytes()


@dataclasses.dataclass(frozen=True)
class _MustNotRead(BlobReader):
    def read(self) -> bytes:
        raise AssertionError("an object over max_bytes was read")


def test_max_bytes_is_configurable_and_a_known_size_is_refused_before_reading() -> None:
    from processors import ImageClassificationProcessor

    jpeg = samples.jpeg()
    now = datetime.datetime.now(datetime.UTC)
    huge = GCSFileEvent(
        bucket_name="b",
        name="huge.jpg",
        generation=1,
        size=MB50,
        content_type="image/jpeg",
        event_time=now,
        event_id="b/huge.jpg#1",
        metadata={},
        reader=_MustNotRead(),
    )
    # A Pub/Sub message has no size before its payload is read: decode_image checks it.
    message = PubSubMessageEvent(
        message_id="7",
        data=samples.padded_jpeg(len(jpeg) + 1),
        name="padded.jpg",
        event_id="t/7",
        event_time=now,
        metadata={},
    )
    at_limit = gcs_file_event("at-limit.jpg", jpeg)
    processor = ImageClassificationProcessor(
        bucket_name="photos", table_id="demo.predictions", max_bytes=len(jpeg)
    )
    result = run_processor(processor, [huge, message, at_limit])
    assert [r["image_name"] for r in result.rows] == ["at-limit.jpg"]
    assert top(result.rows[0])[0] in CAT_CLASS_INDICES
    dead = {d["object_name"]: d for d in result.dead_letters}
    assert set(dead) == {"huge.jpg", "padded.jpg"}
    assert dead["huge.jpg"]["error_type"] == "ImageFileTooLargeError"
    assert f"image file is {MB50} bytes" in dead["huge.jpg"]["reason"]
    assert dead["padded.jpg"]["error_type"] == "ImageFileTooLargeError"
    assert f"image file is {len(jpeg) + 1} bytes" in dead["padded.jpg"]["reason"]
    assert f"limit of {len(jpeg)} bytes" in dead["padded.jpg"]["reason"]
