#!/bin/sh
# Regenerates the Trace2 captures in trace2/ with the installed git (the committed ones come from git 2.39.5).
# Every file is real git output; the scenarios are the ones the Trace2 tests need. Paths inside the captures
# point into a temporary directory that no longer exists; tests match repository paths by their suffix.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/trace2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
rm -f "$out"/*.jsonl

# Keep the captures independent of the caller's git configuration and Trace2 settings.
unset GIT_TRACE2 GIT_TRACE2_EVENT GIT_TRACE2_PERF GIT_TRACE2_PARENT_SID GIT_TRACE2_ENV_VARS GIT_TRACE2_BRIEF \
    GIT_TRACE2_EVENT_BRIEF CORRELATION_ID GIT_DIR
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_SYSTEM=/dev/null
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com

storage="$work/storage"
mkdir -p "$storage/group"
for name in a b c; do
    git init -q --bare "$storage/group/$name.git"
    git init -q "$work/src-$name"
    for i in 1 2 3; do echo "$name $i" > "$work/src-$name/f$i"; done
    git -C "$work/src-$name" add .
    git -C "$work/src-$name" commit -q -m "$name"
    git -C "$work/src-$name" push -q "$storage/group/$name.git" HEAD:refs/heads/main
    git --git-dir="$storage/group/$name.git" symbolic-ref HEAD refs/heads/main
done

# 1. A clone whose sids carry a correlation id prefix (what Gitaly's GIT_TRACE2_PARENT_SID does), with
#    CORRELATION_ID reported through GIT_TRACE2_ENV_VARS: clone → upload-pack → pack-objects, index-pack, rev-list.
(cd "$work" && GIT_TRACE2_EVENT="$out/clone-sid-prefix.jsonl" GIT_TRACE2_PARENT_SID=corr-clone-1 \
    GIT_TRACE2_ENV_VARS=CORRELATION_ID CORRELATION_ID=corr-clone-1 \
    git clone -q --no-local "$storage/group/a.git" dst-1)

# 2. A command that reports CORRELATION_ID only through def_param (the tap's git wrapper sets GIT_TRACE2_ENV_VARS).
GIT_TRACE2_EVENT="$out/def-param.jsonl" GIT_TRACE2_ENV_VARS=CORRELATION_ID CORRELATION_ID=corr-param-2 \
    git --git-dir="$storage/group/b.git" rev-list --all > /dev/null

# 3. Gitaly's way of running upload-pack, without any correlation id: only --git-dir and time can join it.
GIT_TRACE2_EVENT="$out/git-dir.jsonl" \
    git --git-dir="$storage/group/c.git" upload-pack --stateless-rpc --advertise-refs "$storage/group/c.git" \
    > /dev/null

# 4. Two clones of different repositories at the same time, into one file (interleaved lines).
(cd "$work" && GIT_TRACE2_EVENT="$out/concurrent.jsonl" git clone -q --no-local "$storage/group/a.git" dst-a &
    cd "$work" && GIT_TRACE2_EVENT="$out/concurrent.jsonl" git clone -q --no-local "$storage/group/b.git" dst-b &
    wait)

# 5. Regions on a thread other than main (index extensions loaded by a helper thread).
git -C "$work/dst-1" -c index.recordOffsetTable=true -c index.recordEndOfIndexEntries=true \
    update-index --index-version 2 --really-refresh
GIT_TRACE2_EVENT="$out/thread-regions.jsonl" git -C "$work/dst-1" -c index.threads=4 ls-files > /dev/null

# 6. A cat-file --batch (the kind Gitaly caches) whose reader goes away: killed by SIGPIPE, it ends with
#    `signal`, not `exit`.
yes main | GIT_TRACE2_EVENT="$out/signal.jsonl" git --git-dir="$storage/group/a.git" cat-file --batch \
    | head -c 10 > /dev/null

# 7. A failing command: error event and a non-zero exit code.
GIT_TRACE2_EVENT="$out/error.jsonl" git --git-dir="$storage/group/a.git" rev-parse --verify no-such-ref \
    > /dev/null 2>&1 || true

# 8. Brief mode (GIT_TRACE2_EVENT_BRIEF): no file/line, `time` only on the first and last events.
GIT_TRACE2_EVENT="$out/brief.jsonl" GIT_TRACE2_EVENT_BRIEF=true \
    git --git-dir="$storage/group/a.git" pack-objects --all --stdout < /dev/null > /dev/null

wc -l "$out"/*.jsonl
