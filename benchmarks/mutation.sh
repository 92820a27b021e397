#!/usr/bin/env bash
# Mutation score of the modules whose logic users trust: the stages' verdict helpers, the
# preset validator, the run-folder writer and reader, slots, kill and pruning.
#
#   benchmarks/mutation.sh                 every module, every mutant (~20 min on 2 cores)
#   benchmarks/mutation.sh --quick         a deterministic third of each module's mutants
#   benchmarks/mutation.sh pruning slots   some modules (names: see benchmarks/mutation.py)
#   benchmarks/mutation.sh --worktree      the working tree instead of HEAD
#
# Runs in a scratch copy of the checkout (nothing is written to the tree), with mutmut 3
# (pip install 'mutmut>=3,<4'); prints each module's score, the surviving mutants as diffs,
# and the total. See docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
exec python benchmarks/mutation.py "$@"
