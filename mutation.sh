#!/usr/bin/env bash
# Mutation testing of the delivery paths with mutmut 3 (https://mutmut.readthedocs.io).
# What is mutated and which tests judge each mutant: [tool.mutmut] in pyproject.toml.
# Outside CI (./test.sh never runs it): a full run takes tens of minutes on 2 cores.
#
#   ./mutation.sh            run (resumes: mutants already judged keep their result unless
#                            their function or the tests changed), then print the summary
#   ./mutation.sh 'GLOB'...  run only the mutants whose names match (fnmatch), e.g.
#                            'buildflow.runtime.retry.*', then print the summary
#   ./mutation.sh --summary  print the summary of the last run only
#
# The summary: counts per status, the kill ratio (killed + timeout + segfault) / (mutants
# the tests ran against: all but "no tests", the mutants of functions no selected test
# executes, and "skipped"), and each survivor's name; `mutmut show NAME` prints its diff. docs/mutation-survivors.md lists the survivors judged equivalent, with why.
# Runs at low priority (nice 10): the machine is shared. MUTATION_JOBS sets the number of
# parallel mutants (default: the number of CPUs).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-.venv/bin/python}
if [[ "${1:-}" != "--summary" ]]; then
  start=$(date +%s)
  # mutmut exits non-zero when mutants survive: the summary below is the verdict
  nice -n 10 "$PY" -m mutmut run --max-children "${MUTATION_JOBS:-$(nproc)}" "$@" || true
  echo "duration: $(( $(date +%s) - start )) s"
fi
"$PY" -m mutmut export-cicd-stats >/dev/null
"$PY" - <<'PY'
import json

s = json.load(open("mutants/mutmut-cicd-stats.json"))
counted = ("killed", "timeout", "survived", "no_tests", "suspicious", "skipped", "segfault")
not_checked = s["total"] - sum(s[k] for k in counted) - s["check_was_interrupted_by_user"]
judged = s["killed"] + s["timeout"] + s["survived"] + s["suspicious"] + s["segfault"]
caught = s["killed"] + s["timeout"] + s["segfault"]
print(
    f"mutants: {s['total']}  killed: {s['killed']}  timeout: {s['timeout']}  survived: {s['survived']}"
    f"  suspicious: {s['suspicious']}  no tests: {s['no_tests']}  skipped: {s['skipped']}"
    f"  not checked: {not_checked}"
)
print(f"kill ratio: {caught}/{judged} = {caught / judged:.1%}" if judged else "kill ratio: no mutant judged")
if not_checked:
    print("the run did not finish: rerun ./mutation.sh (it resumes)")
    raise SystemExit(1)
PY
echo "survivors (mutmut show NAME for the diff):"
"$PY" -m mutmut results | grep -E ': (survived|suspicious)$' || echo "    none"
