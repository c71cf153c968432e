#!/bin/sh
# gitaly-tap: git wrapper that sends the Trace2 events of every git command Gitaly runs to the tap.
#
# Install (see docs/trace2.md): copy this file next to Gitaly (e.g. /opt/gitaly-tap/git), set the two paths below,
# make it executable, and point Gitaly at it:
#
#   [git]
#   use_bundled_binaries = false
#   bin_path = "/opt/gitaly-tap/git"
#
# Gitaly runs git with an allow-listed environment, so these settings live in this file, not in Gitaly's
# environment. The two variables below may still be overridden from the environment for tests.
TAP_TRACE2_SOCKET="${GITALY_TAP_TRACE2_SOCKET:-/var/opt/gitlab/gitaly-tap/trace2.sock}"
REAL_GIT="${GITALY_TAP_REAL_GIT:-/usr/bin/git}"

# Never override a target someone else chose: Gitaly sets GIT_TRACE2_EVENT itself for pack-objects and for the
# commands of sampled traces (its gitaly-trace2* temp files, which `gitaly-tap --trace2-dir` reads).
if [ -z "${GIT_TRACE2_EVENT:-}" ]; then
    GIT_TRACE2_EVENT="af_unix:stream:$TAP_TRACE2_SOCKET"
    export GIT_TRACE2_EVENT
fi

# Report Gitaly's CORRELATION_ID as a def_param event: the tap's second join key after the sid prefix.
case ",${GIT_TRACE2_ENV_VARS:-}," in
*,CORRELATION_ID,*) ;;
,,) GIT_TRACE2_ENV_VARS=CORRELATION_ID ;;
*) GIT_TRACE2_ENV_VARS="$GIT_TRACE2_ENV_VARS,CORRELATION_ID" ;;
esac
export GIT_TRACE2_ENV_VARS

exec "$REAL_GIT" "$@"
