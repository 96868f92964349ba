# Shared by the scripts in .ci/services/ (sourced, not run).

# A server started from a checkout that was deleted afterwards keeps listening, but anything
# it resolves against its working directory fails (s3s-fs answers 500 to every request). Such
# a server is stopped here, so that the calling script starts it again.
restart_if_orphaned() { # pgrep pattern
  local pid
  for pid in $(pgrep -f "$1" || true); do
    if readlink "/proc/$pid/cwd" 2>/dev/null | grep -q ' (deleted)$'; then
      echo "$(basename "$0"): stopping $1 (pid $pid): its working directory is gone" >&2
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
}
