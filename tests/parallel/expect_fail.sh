#!/bin/sh
# Runs a command that must fail: exit non-zero, within a time limit, printing a line
# that matches an extended regex.   usage: expect_fail.sh SECONDS REGEX COMMAND...
# With EXPECT_RC set in the environment, the exit code must be that number.
max=$1
re=$2
shift 2
start=$(date +%s)
out=$("$@" 2>&1)
rc=$?
took=$(( $(date +%s) - start ))
printf '%s\n' "$out"
if [ "$rc" -eq 0 ]; then
  echo "expect_fail: the command exited 0; it should have failed"
  exit 1
fi
if [ -n "$EXPECT_RC" ] && [ "$rc" -ne "$EXPECT_RC" ]; then
  echo "expect_fail: exit code $rc; expected $EXPECT_RC"
  exit 1
fi
if ! printf '%s\n' "$out" | grep -Eq "$re"; then
  echo "expect_fail: no output line matches /$re/"
  exit 1
fi
if [ "$took" -gt "$max" ]; then
  echo "expect_fail: took ${took} s, more than ${max} s"
  exit 1
fi
echo "expect_fail: ok: exit code $rc after ${took} s"
