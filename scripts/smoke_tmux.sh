#!/usr/bin/env bash
# Smoke test of the real app in a real terminal: start `macllm` (default model) in a detached tmux at
# 120x40, ask "Name the capital of France.", wait for "Paris", open the token inspector (Ctrl+T),
# close it (Esc), open the train screen (F9: its labelled form) and the help (F1), quit (Ctrl+Q). Exits 0 when all of that worked, 1 with the screen printed when not.
#
# The model is pulled into $MACLLM_HOME (default: a temp folder, so a download) before anything is timed.
# The app itself runs in a fresh home that only borrows that models folder, so no earlier chat is on screen.
# Answers are greedy (--temp 0) so the check does not depend on luck. SMOKE_VERBOSE=1 prints the answer screen.
set -euo pipefail
cd "$(dirname "$0")/.."

MACLLM=${MACLLM:-.venv/bin/macllm}
MODEL=smollm2-135m  # the default model; the app is started without naming it
ANSWER_TIMEOUT=${SMOKE_ANSWER_TIMEOUT:-60}
SESSION=smoke
WORK=$(mktemp -d)
SOCKET=$WORK/tmux.sock  # a tmux server of our own: killing it touches nothing else

say() { printf 'smoke: %s\n' "$*" >&2; }
t() { tmux -S "$SOCKET" -f /dev/null "$@"; }  # no user tmux.conf: the same screen everywhere
screen() { t capture-pane -p -t "$SESSION" 2>/dev/null || true; }
cleanup() {
  t kill-server 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  say "FAIL: $*"
  say "screen at the time:"
  screen | sed 's/^/  | /' >&2
  exit 1
}

# Poll the screen every 0.1 s until `grep -E pattern` matches (and `avoid`, if given, does not).
wait_for() {
  local pattern=$1 timeout=$2 avoid=${3:-} deadline=$((SECONDS + $2)) text
  while ((SECONDS < deadline)); do
    text=$(screen)
    if grep -qE "$pattern" <<<"$text" && { [ -z "$avoid" ] || ! grep -qE "$avoid" <<<"$text"; }; then
      return 0
    fi
    if grep -qE "Choose a model|\(not loaded\)" <<<"$text"; then
      fail "the model did not load"
    fi
    [ -s "$WORK/exit-code" ] && fail "the app exited early (status $(cat "$WORK/exit-code"))"
    sleep 0.1
  done
  fail "waited ${timeout}s for /$pattern/"
}

if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing tmux"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; } >/dev/null ||
      { say "could not install tmux"; exit 1; }
  else
    say "tmux is missing: install it (apt-get install tmux, brew install tmux) and rerun"
    exit 1
  fi
fi
[ -x "$MACLLM" ] || { say "$MACLLM not found: run scripts/setup.sh first"; exit 1; }

# 1. The model, downloaded (if needed) outside the timed part.
if [ -z "${MACLLM_HOME:-}" ]; then
  export MACLLM_HOME="$WORK/cache-home"
fi
say "pulling $MODEL into $MACLLM_HOME (once)"
"$MACLLM" pull "$MODEL" >/dev/null || { say "could not pull $MODEL"; exit 1; }

# 2. A clean home for the app, sharing the models folder.
APP_HOME="$WORK/app-home"
mkdir -p "$APP_HOME"
ln -s "$(cd "$MACLLM_HOME" && pwd)/models" "$APP_HOME/models"

start=$SECONDS
t new-session -d -s "$SESSION" -x 120 -y 40 \
  "env MACLLM_HOME='$APP_HOME' LANG=C.UTF-8 '$MACLLM' chat --temp 0; echo \$? > '$WORK/exit-code'" \; \
  set-option -t "$SESSION" remain-on-exit on >/dev/null  # the pane outlives the app: a crash stays readable

wait_for "$MODEL" 30 "\(loading"
say "ready after $((SECONDS - start)) s"

t send-keys -t "$SESSION" -l "Name the capital of France."
t send-keys -t "$SESSION" Enter
wait_for "Paris" "$ANSWER_TIMEOUT"
wait_for "tok/s" 30  # the answer has finished: the status bar shows its speed
say "answered after $((SECONDS - start)) s"
[ -n "${SMOKE_VERBOSE:-}" ] && screen | sed 's/^/  | /' >&2

t send-keys -t "$SESSION" C-t
wait_for "Token inspector" 10
t send-keys -t "$SESSION" Escape
wait_for "Paris" 10 "Token inspector"

t send-keys -t "$SESSION" F9
wait_for "Learning rate" 10
[ -n "${SMOKE_VERBOSE:-}" ] && screen | sed 's/^/  | /' >&2
t send-keys -t "$SESSION" Escape
wait_for "Paris" 10 "Learning rate"

t send-keys -t "$SESSION" F1
wait_for "Nothing you type leaves it" 10
[ -n "${SMOKE_VERBOSE:-}" ] && screen | sed 's/^/  | /' >&2
t send-keys -t "$SESSION" Escape
wait_for "Paris" 10 "Nothing you type leaves it"

t send-keys -t "$SESSION" C-q
for _ in $(seq 100); do
  [ -s "$WORK/exit-code" ] && break
  sleep 0.1
done
[ -s "$WORK/exit-code" ] || fail "the app did not quit on Ctrl+Q"
code=$(cat "$WORK/exit-code")
[ "$code" = 0 ] || fail "the app exited with status $code"
say "OK: ready, answered with Paris, token inspector, train screen and help opened and closed, quit cleanly ($((SECONDS - start)) s)"
