#!/usr/bin/env bash
# A new user's first hour, scripted: clone the repository into a temporary folder and run the README's commands
# as written there, without activating the virtual environment, checking each one's exit status and output.
# Not run by CI (it installs ~2 GB and trains); run it by hand before a release:
#
#     scripts/first_hour.sh [REPOSITORY]          # default: this checkout; DEMO_ARGS=--quick for the short demo
#     DEMO_ARGS=--quick KEEP=1 scripts/first_hour.sh   # keep the temporary clone to look at it
#
# Each step prints its command, its last lines of output and a verdict; a table of every step closes the run, and
# the exit status is the number of failed steps. A command that the README does not show literally is flagged
# (the README is the script's source; keep the two in step).
set -u
REPOSITORY=${1:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)}
SHARED=${SHARED:-$REPOSITORY/../shared}   # the real benchmark files that the README's eval commands read
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wings-first-hour.XXXXXX")
export DEMO_ARGS=${DEMO_ARGS:-}
unset VIRTUAL_ENV PYTHONPATH                # a new user's shell: no environment activated
export PATH=$(echo "$PATH" | tr ':' '\n' | grep -v '/\.venv/bin$' | paste -sd: -)
FAILED=0
SUMMARY=()

git clone -q "$REPOSITORY" "$WORK/wings" || { echo "cannot clone $REPOSITORY"; exit 1; }
[ -d "$SHARED/data" ] && ln -s "$(cd "$SHARED" && pwd)" "$WORK/shared"   # ../shared/data from the clone
cd "$WORK/wings"
echo "fresh clone of $REPOSITORY at $WORK/wings ($(git log --oneline -1))"

# step NAME EXPECTED_STATUS OUTPUT_PATTERN COMMAND [README_TEXT]: run COMMAND in bash, check its status and that
# its output (stdout and stderr) matches the extended regular expression OUTPUT_PATTERN; README_TEXT (default: the
# command without `time` and DEMO_ARGS) is what the README should show.
step() {
    local name=$1 expected=$2 pattern=$3 command=$4 start status seconds verdict literal shown
    shown=${5:-${command#time }}
    literal=$(grep -qF -- "${shown%% DEMO_ARGS=*}" README.md && echo "in README" || echo "NOT IN README")
    echo; echo "== $name: \$ $command   ($literal)"
    start=$(date +%s.%N)
    bash -c "$command" > "$WORK/$name.log" 2>&1 < "${STDIN:-/dev/null}"
    status=$?
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    tail -n 8 "$WORK/$name.log" | cut -c1-200 | sed 's/^/   | /'
    verdict=ok
    [ "$status" -eq "$expected" ] || verdict="FAILED (exit $status, expected $expected)"
    if [ "$verdict" = ok ] && ! grep -qE -- "$pattern" "$WORK/$name.log"; then
        verdict="FAILED (output lacks /$pattern/)"
    fi
    [ "$verdict" = ok ] || FAILED=$((FAILED + 1))
    printf '   -> %s, exit %s, %.1f s\n' "$verdict" "$status" "$seconds"
    SUMMARY+=("| $name | \`$command\` | $status | $(printf '%.1f' "$seconds") | $verdict | $literal |")
}

step install 0 "" "make install"
echo "   .venv: $(du -sh .venv | cut -f1)"
step help 0 "demo +train WINGS" "time .venv/bin/wings --help"
step demo 0 "Chat with the trained model" "make demo DEMO_ARGS=$DEMO_ARGS"
echo "   runs: $(du -sh runs | cut -f1)"
chat=$(grep -A1 "Chat with the trained model" "$WORK/demo.log" | tail -n 1 | sed 's/^ *//')
printf 'What colour is the shape?\n/quit\n' > "$WORK/chat.in"
STDIN=$WORK/chat.in step chat 0 "wings> +[^ ]" "$chat --max-new-tokens 8 --temperature 0" ".venv/bin/wings chat --model"
step quickstart 0 "same answer: True" "make quickstart"
step eval-missing-split 1 "split 'test' is not under --data-dir.*splits there: .*validation" \
    ".venv/bin/wings eval --model smollm2-135m-instruct --tasks arc_easy --data-dir ../shared/data"
step eval 0 "wrote runs/eval/results.json" \
    ".venv/bin/wings eval --model smollm2-135m-instruct --tasks arc_easy --data-dir ../shared/data --split validation --limit 20"
step train-without-data 1 "wings data easy-vqa --out data/easy-vqa" ".venv/bin/wings train --config configs/tiny-cpu.yaml"
step data 0 "train: .* questions" ".venv/bin/wings data easy-vqa --out data/easy-vqa"
step train 0 "next stage: " ".venv/bin/wings train --config configs/tiny-cpu.yaml --training.max_steps 2"

echo; echo "| step | command | exit | seconds | verdict | README |"; echo "|---|---|---|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
echo; echo "$FAILED step(s) failed"
if [ -n "${KEEP:-}" ]; then echo "clone and logs kept in $WORK"; else cd / && rm -rf "$WORK"; fi
exit "$FAILED"
