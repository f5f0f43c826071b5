"""Every walkthrough of README.md runs as written and prints what the README says it prints.

README.md is read when the tests run (``tests/walkthroughs.py`` says how blocks are marked,
run and compared), so a later edit of a block is what gets tested. Each walkthrough runs in
a fresh copy of the app's folder; long steps are shortened only by the parameters the README
names (its ``run ... as`` directives say which and why).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from infra.stack import Stack
from tests import walkthroughs as wt

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.exists(), reason="Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist"
)

#: Fenced shell blocks that are not run here, each with the reason. Keyed by the block's
#: innermost heading and its first command; every other shell block must be a walkthrough.
NOT_RUN = {
    (
        "Walkthrough",
        "gcloud auth application-default login",
    ): "needs a real Google Cloud project and its credentials",
    ("What has been verified, and how", "gcloud auth application-default login"): (
        "tests/gcp against a real project (skipped without BUILDFLOW_GCP_SMOKE_PROJECT)"
    ),
    ("A real cluster", "export RAY_AUTH_MODE=token"): (
        "several machines; tests/integration/test_ray_runtime.py starts a two-node cluster with token auth"
    ),
}

#: The walkthroughs this file runs; a README walkthrough without a test here fails below.
TESTED = {
    "pixel-payloads",
    "quickstart",
    "emulator",
    "kafka",
    "training",
    "finetune",
    "serving",
    "fashion-mnist-stream",
    "ray",
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _durations(name: str, results: list[wt.Result], started: float, cpu_started: float) -> None:
    """Printed with -s: wall and CPU seconds of the walkthrough (CPU: of the commands it ran,
    which a busy machine does not inflate as much as wall time), and each command's wall time."""
    steps = ", ".join(f"{wt.key(r.command)[:40]!r} {r.seconds:.1f} s" for r in results)
    wall, cpu = time.monotonic() - started, _cpu_s() - cpu_started
    print(f"walkthrough {name}: {wall:.1f} s wall, {cpu:.1f} s CPU ({steps})")


# ------------------------------------------------------------------------------------------
# The README's blocks are all accounted for (fast)
# ------------------------------------------------------------------------------------------


def test_every_shell_block_is_a_walkthrough_or_listed_with_a_reason() -> None:
    unmarked = []
    used = set()
    for block in wt.blocks():
        if block.language not in wt.SHELL_LANGUAGES:
            continue
        if block.marker and block.marker.split(":", 1)[0].strip() == "walkthrough":
            continue
        first = wt.key(wt.shell_commands(block.text)[0])
        entry = next((e for e in NOT_RUN if e[0] == block.headings[-1] and first.startswith(e[1])), None)
        if entry is None:
            unmarked.append(f"{block.where}: {first!r}")
        else:
            used.add(entry)
    assert not unmarked, (
        "README shell blocks with no <!-- walkthrough: NAME --> marker (see tests/walkthroughs.py) "
        f"and not in NOT_RUN: {unmarked}"
    )
    assert used == set(NOT_RUN), f"NOT_RUN lists blocks the README no longer has: {set(NOT_RUN) - used}"


def test_every_walkthrough_has_a_test_and_its_directives_match_its_commands() -> None:
    found = wt.walkthroughs()
    assert set(found) == TESTED, (
        f"walkthroughs without a test: {set(found) - TESTED}; gone: {TESTED - set(found)}"
    )
    for walk in found.values():
        assert walk.blocks, f"walkthrough {walk.name!r} has output blocks but no commands"
        commands = wt.commands_of(walk)  # raises on a directive that matches no command
        wt.expectations(walk, commands)  # raises on a captured `$ command` the block does not have


def test_the_comparison_catches_a_wrong_label_count_or_accuracy() -> None:
    printed = (
        "[12/05/26 16:07:51] INFO     processor image_classification ready: setup() took 6.94 s\n"
        "┏━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┳━━━━━━━┓\n"
        "┃ image_name    ┃ top1            ┃ p50 ms ┃\n"
        "┡━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━╇━━━━━━━━┩\n"
        "│ eagle.jpg     │ kite            │    274 │\n"
        "└───────────────┴─────────────────┴────────┘\n"
        "elapsed 0.96 s, 11.5 events/s, launch to first row 7.69 s, receive-to-row p50 274 ms, peak\n"
        "RSS 975 MB\n"
        "test images 0..1000: accuracy 0.9340 (934/1000)\n"
    )
    claimed = (
        "[11/22/26 06:13:08] INFO     processor image_classification ready: setup() took 8.64 s\n"
        "┏━━━━━━━━━━━┳━━━━━━┳━━━━━━━━┓\n┃ image_name ┃ top1 ┃ p50 ms ┃\n"
        "│ eagle.jpg │ kite │   1182 │\n"
        "elapsed 4.86 s, 2.3 events/s, launch to first row 1.25 s, receive-to-row p50 1182 ms,\n"
        "peak RSS 974 MB\ntest images 0..1000: accuracy 0.9340 (934/1000)\n"
    )
    assert wt.missing_lines(claimed, printed) == []
    assert wt.missing_lines(claimed.replace("│ kite", "│ zebra"), printed) == ["│ eagle.jpg │ zebra │ ~ │"]
    assert wt.missing_lines(claimed.replace("0.9340", "0.9341"), printed)
    assert wt.missing_lines(claimed.replace("(934/", "(933/"), printed)
    assert wt.missing_lines("11 row(s)", "111 row(s)") == ["11 row(s)"]
    assert wt.missing_lines("accuracy 0.93", "accuracy 0.934") == ["accuracy 0.93"]
    assert wt.missing_lines("accuracy 0.9340 (934/1000)", "accuracy 0.9340 (934/1000), macro F1") == []
    # order matters: a claimed line that comes before another must be printed before it
    assert wt.missing_lines("b\na", "a\nb") == ["a"]


def test_python_claims_are_compared_with_the_value() -> None:
    source = "x = [1, 2, 3]\nx  # a list: [1, ..., 3]\nlen(x)  # 4\nx[0]  # prose, not compared\n"
    assert [c for _, c in wt.python_claims(source)] == [None, "[1, ..., 3]", "4", None]
    wrong = wt.run_python_block(source, Path.cwd())
    assert wrong == [("len(x)", "4", "3")]


def test_heredocs_continuations_and_comments_are_one_command_each() -> None:
    script = (
        "# a comment\nfoo a  # says foo\ncat > f.py <<'PY'\nx = 1  # not a command\nPY\nbar \\\n  --baz\n"
    )
    assert wt.shell_commands(script) == [
        "foo a  # says foo",
        "cat > f.py <<'PY'\nx = 1  # not a command\nPY",
        "bar \\\n  --baz",
    ]
    assert (
        wt.key('buildflow query main:app "SELECT 1 # x"  # run it')
        == 'buildflow query main:app "SELECT 1 # x"'
    )
    assert wt.runs_until_interrupted("buildflow run main:app   # in another terminal")
    assert not wt.runs_until_interrupted("buildflow run kafka_main:app --until-idle")
    assert wt.runs_until_interrupted("buildflow serve main:app --port 8080     # prints endpoint: ...")


# ------------------------------------------------------------------------------------------
# The walkthroughs
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quickstart(tmp_path: Path) -> None:
    started, cpu = time.monotonic(), _cpu_s()
    _durations("quickstart", wt.run_walkthrough("quickstart", tmp_path), started, cpu)


@pytest.mark.slow
def test_emulator(tmp_path: Path, local_stack: Stack) -> None:
    started, cpu = time.monotonic(), _cpu_s()
    results = wt.run_walkthrough("emulator", tmp_path, stack_state=local_stack.state_dir)
    _durations("emulator", results, started, cpu)


@pytest.mark.slow
def test_kafka(tmp_path: Path, local_stack: Stack) -> None:
    started, cpu = time.monotonic(), _cpu_s()
    results = wt.run_walkthrough("kafka", tmp_path, stack_state=local_stack.state_dir)
    _durations("kafka", results, started, cpu)


@pytest.mark.slow
@needs_fashion_mnist
def test_training(tmp_path: Path) -> None:
    started, cpu = time.monotonic(), _cpu_s()
    _durations("training", wt.run_walkthrough("training", tmp_path), started, cpu)


@pytest.mark.slow
def test_finetune(tmp_path: Path) -> None:
    started, cpu = time.monotonic(), _cpu_s()
    _durations("finetune", wt.run_walkthrough("finetune", tmp_path), started, cpu)


@pytest.mark.slow
@needs_fashion_mnist
def test_serving(tmp_path: Path) -> None:
    (walk_block,) = wt.walkthroughs()["serving"].blocks
    assert walk_block.language == "python"
    folder = wt.prepare_folder(tmp_path)
    wrong = wt.run_python_block(walk_block.text, folder)
    assert not wrong, (
        f"{walk_block.where}: values that differ from their comments (statement, claim, value): {wrong}"
    )


@pytest.mark.slow
@needs_fashion_mnist
def test_pixel_payloads(tmp_path: Path, local_stack: Stack) -> None:
    """The producers only: tests/training/test_streamed_accuracy.py (Kafka) and
    test_pixel_payloads_pubsub.py (Pub/Sub) consume these payloads and check every row."""
    started, cpu = time.monotonic(), _cpu_s()
    results = wt.run_walkthrough("pixel-payloads", tmp_path, stack_state=local_stack.state_dir)
    _durations("pixel-payloads", results, started, cpu)


@pytest.mark.slow
@needs_fashion_mnist
def test_fashion_mnist_stream(tmp_path: Path, local_stack: Stack) -> None:
    started, cpu = time.monotonic(), _cpu_s()
    results = wt.run_walkthrough("fashion-mnist-stream", tmp_path, stack_state=local_stack.state_dir)
    _durations("fashion-mnist-stream", results, started, cpu)


@pytest.mark.slow
def test_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    started, cpu = time.monotonic(), _cpu_s()
    results = wt.run_walkthrough("ray", tmp_path)
    _durations("ray", results, started, cpu)
    run = next(r for r in results if wt.runs_until_interrupted(r.command))
    # issue 21 item 8: Ray's own log lines came before ours
    assert run.output.startswith("running 'buildflow' in 'local' on ray"), run.output[:2000]
