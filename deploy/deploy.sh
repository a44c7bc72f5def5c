#!/bin/sh
# Copy a model and its manifest.json to a device over SSH, check there that the copy has the size
# and sha256 the manifest records, and run `edge-classify --info` on it as a smoke test.
#
#   deploy/deploy.sh DEVICE [MODEL] [DEST]                 copy, verify, install, smoke-test
#   deploy/deploy.sh --verify-only DEVICE [MODEL] [DEST]   check the copy already on the device
#
# DEVICE is user@host (or a Host from ~/.ssh/config); MODEL defaults to artifacts/model_int8.tflite
# and must have a manifest.json beside it (edge-convert writes one); DEST is a folder on the device,
# relative to the login's home unless absolute (default edge-models). Environment:
#   SSH_PORT              port of the device's sshd (default: ssh's own default, 22)
#   SSH_IDENTITY          private key file for ssh and scp (-i)
#   SSH_OPTS              more ssh/scp options, split on whitespace (e.g. "-o StrictHostKeyChecking=yes")
#   SSH_CONNECT_TIMEOUT   seconds to wait for the device to answer (default 10)
#   REMOTE_EDGE_CLASSIFY  the command that runs edge-classify on the device (default: edge-classify
#                         on the login's PATH, else ~/edge-venv/bin/edge-classify)
#   PYTHON                local Python used to read manifest.json (default python3)
#   DEPLOY_SCP            the scp program (default scp)
#
# The files go to hidden temporary names first and are renamed into place only after their sha256
# matched on the device, so a dropped connection or a damaged transfer never leaves a half or wrong
# file under the final name. Every failure prints one line naming the step and exits 1; usage
# errors exit 2. ssh runs with BatchMode=yes: set up key login first (deploy/README.md).

# The shell snippets are single-quoted on purpose: they expand where they run, on the device.
# shellcheck disable=SC2016
set -u

PROG=deploy
DEFAULT_MODEL=artifacts/model_int8.tflite
DEFAULT_DEST=edge-models
MANIFEST_NAME=manifest.json
PARTIAL_SUFFIX=.deploy-partial
EXIT_FAILURE=1
EXIT_USAGE=2
SSH_EXIT_CONNECTION=255
# Exit codes of the remote snippets below, told apart from the commands' own failures.
REMOTE_NO_FILE=3
REMOTE_NO_HASHER=4
REMOTE_NO_EDGE_CLASSIFY=127

usage() {
    echo "usage: deploy/deploy.sh [--verify-only] DEVICE [MODEL] [DEST]   (see the header of this script)"
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    usage >&2
    exit "$EXIT_USAGE"
}

# One line naming the step and the reason, then stop.
fail() {
    printf '%s: %s failed: %s\n' "$PROG" "$1" "$2" >&2
    exit "$EXIT_FAILURE"
}

say() {
    printf '%s: %s\n' "$PROG" "$1" >&2
}

# The last non-empty line of a file, whitespace squeezed: the reason a tool gave for failing.
last_line() {
    tr -d '\r' < "$1" 2>/dev/null | grep -v '^[[:space:]]*$' | tail -n 1 | tr -s ' \t' '  '
}

# Quote one word for the remote shell: wrap in single quotes, each ' becomes '\''.
quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# Prints "SIZE SHA256" of the file $1; runs unchanged on this machine and on the device.
DIGEST_SCRIPT='
file=$1
[ -f "$file" ] || { echo "$file: no such file" >&2; exit '"$REMOTE_NO_FILE"'; }
size=$(wc -c < "$file") || exit 1
if command -v sha256sum >/dev/null 2>&1; then
    sum=$(sha256sum < "$file") || exit 1
elif command -v python3 >/dev/null 2>&1; then
    sum=$(python3 -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())" < "$file") || exit 1
else
    echo "neither sha256sum nor python3 is installed" >&2
    exit '"$REMOTE_NO_HASHER"'
fi
echo $size ${sum%% *}
'

PREPARE_SCRIPT='mkdir -p -- "$1"'

# Rename pairs of (temporary, final) paths into place.
INSTALL_SCRIPT='
while [ $# -ge 2 ]; do
    mv -f -- "$1" "$2" || exit 1
    shift 2
done
'

CLEANUP_SCRIPT='rm -f -- "$@"'

# Runs `edge-classify --info MODEL` with the command $2, or finds edge-classify when $2 is empty.
# stdin is the script itself (sh -s), so the command reads /dev/null instead.
SMOKE_SCRIPT='
model=$1
command=$2
if [ -z "$command" ]; then
    if command -v edge-classify >/dev/null 2>&1; then
        command=edge-classify
    elif [ -x "$HOME/edge-venv/bin/edge-classify" ]; then
        command="\"\$HOME/edge-venv/bin/edge-classify\""
    else
        echo "edge-classify is not on the PATH of a non-interactive login nor in ~/edge-venv/bin; install it (deploy/README.md) or set REMOTE_EDGE_CLASSIFY" >&2
        exit '"$REMOTE_NO_EDGE_CLASSIFY"'
    fi
fi
eval "$command --info \"\$model\"" < /dev/null
'

# ssh to the device with the common options; arguments: the remote command words.
device_ssh() {
    # SSH_OPTS is a list of options: split on whitespace on purpose.
    # shellcheck disable=SC2086
    ssh -o BatchMode=yes -o ConnectTimeout="$connect_timeout" \
        ${SSH_PORT:+-p} ${SSH_PORT:+"$SSH_PORT"} \
        ${SSH_IDENTITY:+-i} ${SSH_IDENTITY:+"$SSH_IDENTITY"} \
        $ssh_opts "$DEVICE" "$@"
}

# Run the shell snippet $1 with `sh -s` on the device, arguments $2...; output in $work/out and
# $work/err; returns the snippet's exit status (255: ssh itself failed).
on_device() {
    snippet=$1
    shift
    remote_command="sh -s --"
    for word in "$@"; do
        remote_command="$remote_command $(quote "$word")"
    done
    printf '%s\n' "$snippet" | device_ssh "$remote_command" >"$work/out" 2>"$work/err"
}

# Stop with the connect step's line when ssh itself failed (exit 255).
check_connection() {
    if [ "$1" -eq "$SSH_EXIT_CONNECTION" ]; then
        fail "connect" "cannot reach $DEVICE over SSH ($(last_line "$work/err"))"
    fi
}

# Copy local file $1 to device path $2.
copy_to_device() {
    # shellcheck disable=SC2086
    "$scp_program" -q -o BatchMode=yes -o ConnectTimeout="$connect_timeout" \
        ${SSH_PORT:+-P} ${SSH_PORT:+"$SSH_PORT"} \
        ${SSH_IDENTITY:+-i} ${SSH_IDENTITY:+"$SSH_IDENTITY"} \
        $ssh_opts "$1" "$DEVICE:$2" >"$work/out" 2>"$work/err"
}

# "SIZE SHA256" expected for the file named $2 by the manifest $1 (needs only Python's stdlib).
manifest_entry() {
    "$python" - "$1" "$2" >"$work/out" 2>"$work/err" <<'EOF'
import json
import sys

path, name = sys.argv[1], sys.argv[2]
try:
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
except OSError as error:
    sys.exit(f"{path}: cannot read the manifest ({error.strerror})")
except ValueError as error:
    sys.exit(f"{path}: not a readable manifest ({error})")
files = manifest.get("files") if isinstance(manifest, dict) else None
if not isinstance(files, dict):
    sys.exit(f"{path}: not a manifest (no 'files' table)")
entry = files.get(name)
if not isinstance(entry, dict):
    listed = ", ".join(sorted(files)) or "nothing"
    sys.exit(f"{path}: has no entry for {name} (it lists {listed})")
size, sha256 = entry.get("size"), entry.get("sha256")
if not isinstance(size, int) or not isinstance(sha256, str):
    sys.exit(f"{path}: the entry for {name} lacks its size or sha256")
print(size, sha256)
EOF
}

# Compare "SIZE SHA256" pairs; prints what differs (empty when they match).
differences() {
    # shellcheck disable=SC2086
    set -- $1 $2
    found=""
    if [ "$3" != "$1" ]; then
        found="size is $3 bytes, manifest says $1"
    fi
    if [ "$4" != "$2" ]; then
        found="${found:+$found; }sha256 is $4, manifest says $2"
    fi
    printf '%s' "$found"
}

# Best effort: remove the temporary files from the device.
remove_partials() {
    on_device "$CLEANUP_SCRIPT" "$remote_partial_model" "$remote_partial_manifest" || true
}

# Stop after a failure past the copy: the message is expanded by the caller, before the cleanup
# overwrites $work/err; in deploy mode the temporary copies are removed from the device.
abort() {
    [ "$mode" = deploy ] && remove_partials
    fail "$1" "$2"
}

# ---- arguments -------------------------------------------------------------------------------
mode=deploy
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --verify-only) mode=verify; shift ;;
    -*) usage_error "unknown option $1" ;;
esac
[ $# -ge 1 ] && [ $# -le 3 ] || usage_error "expected DEVICE [MODEL] [DEST]"
DEVICE=$1
MODEL=${2:-$DEFAULT_MODEL}
DEST=${3:-$DEFAULT_DEST}
case "$DEVICE" in
    ''|-*) usage_error "DEVICE must be user@host, got '$DEVICE'" ;;
esac
model_name=$(basename -- "$MODEL")
# scp may hand remote paths to the device's shell: keep names to characters no shell treats specially.
case "$DEST" in
    *[!A-Za-z0-9._/-]*) usage_error "DEST '$DEST' may only contain letters, digits and . _ / -" ;;
esac
case "$model_name" in
    *[!A-Za-z0-9._-]*) usage_error "model file name '$model_name' may only contain letters, digits and . _ -" ;;
esac
case "${SSH_PORT:-}" in
    *[!0-9]*) usage_error "SSH_PORT must be a number, got '$SSH_PORT'" ;;
esac

connect_timeout=${SSH_CONNECT_TIMEOUT:-10}
ssh_opts=${SSH_OPTS:-}
python=${PYTHON:-python3}
scp_program=${DEPLOY_SCP:-scp}
manifest=$(dirname -- "$MODEL")/$MANIFEST_NAME
remote_model=${DEST%/}/$model_name
remote_manifest=${DEST%/}/$MANIFEST_NAME
remote_partial_model=${DEST%/}/.$model_name$PARTIAL_SUFFIX
remote_partial_manifest=${DEST%/}/.$MANIFEST_NAME$PARTIAL_SUFFIX
remote_classify=${REMOTE_EDGE_CLASSIFY:-}

work=$(mktemp -d "${TMPDIR:-/tmp}/edge-deploy.XXXXXX") || fail "setup" "cannot create a temporary folder"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# ---- local check: the file to send is the file the manifest (and the report) describe ------------
[ -f "$MODEL" ] || fail "local check" "$MODEL: model not found (run make convert, or set MODEL=)"
[ -f "$manifest" ] || fail "local check" "$manifest: manifest not found beside $MODEL (edge-convert writes it)"
command -v "$python" >/dev/null 2>&1 || fail "local check" "$python not found: set PYTHON to a Python 3 to read $manifest"
manifest_entry "$manifest" "$model_name" || fail "local check" "$(last_line "$work/err")"
expected=$(cat "$work/out")
printf '%s\n' "$DIGEST_SCRIPT" | sh -s -- "$MODEL" >"$work/out" 2>"$work/err" \
    || fail "local check" "cannot hash $MODEL ($(last_line "$work/err"))"
local_mismatch=$(differences "$expected" "$(cat "$work/out")")
[ -z "$local_mismatch" ] || fail "local check" "$MODEL does not match $manifest ($local_mismatch); nothing was copied"
printf '%s\n' "$DIGEST_SCRIPT" | sh -s -- "$manifest" >"$work/out" 2>"$work/err" \
    || fail "local check" "cannot hash $manifest ($(last_line "$work/err"))"
manifest_digest=$(cat "$work/out")

if [ "$mode" = deploy ]; then
    # ---- prepare: reach the device and create DEST ------------------------------------------
    on_device "$PREPARE_SCRIPT" "$DEST"
    status=$?
    check_connection "$status"
    [ "$status" -eq 0 ] || fail "prepare" "cannot create $DEST on $DEVICE ($(last_line "$work/err"))"
    say "copying $MODEL and $MANIFEST_NAME to $DEVICE:$DEST"

    # ---- copy to temporary names ----------------------------------------------------------------
    copy_to_device "$MODEL" "$remote_partial_model" \
        || abort "copy" "scp of $MODEL to $DEVICE:$DEST failed ($(last_line "$work/err"))"
    copy_to_device "$manifest" "$remote_partial_manifest" \
        || abort "copy" "scp of $manifest to $DEVICE:$DEST failed ($(last_line "$work/err"))"
    check_model=$remote_partial_model
    check_manifest=$remote_partial_manifest
    not_installed="; nothing was installed as $remote_model"
    model_subject="the copy on $DEVICE"
    manifest_subject="the copy of $MANIFEST_NAME on $DEVICE"
else
    check_model=$remote_model
    check_manifest=$remote_manifest
    not_installed=""
    model_subject="$remote_model on $DEVICE"
    manifest_subject="$remote_manifest on $DEVICE"
fi

# ---- remote check: size and sha256 computed on the device ----------------------------------------
on_device "$DIGEST_SCRIPT" "$check_model"
status=$?
check_connection "$status"
if [ "$status" -eq "$REMOTE_NO_FILE" ]; then
    abort "remote check" "$check_model not found on $DEVICE${not_installed:-; deploy it first (make deploy)}"
elif [ "$status" -ne 0 ]; then
    abort "remote check" "cannot hash $check_model on $DEVICE ($(last_line "$work/err"))$not_installed"
fi
remote_digest=$(cat "$work/out")
remote_mismatch=$(differences "$expected" "$remote_digest")
[ -z "$remote_mismatch" ] \
    || abort "remote check" "$model_subject does not match $manifest ($remote_mismatch)$not_installed"

# The device's manifest.json must be the local one, byte for byte: edge-classify --verify reads it.
on_device "$DIGEST_SCRIPT" "$check_manifest"
status=$?
check_connection "$status"
[ "$status" -eq 0 ] && [ "$(cat "$work/out")" = "$manifest_digest" ] \
    || abort "remote check" "$manifest_subject is missing or differs from $manifest$not_installed"

if [ "$mode" = deploy ]; then
    # ---- install: rename into place ---------------------------------------------------------------
    on_device "$INSTALL_SCRIPT" "$remote_partial_manifest" "$remote_manifest" \
        "$remote_partial_model" "$remote_model"
    status=$?
    check_connection "$status"
    [ "$status" -eq 0 ] \
        || abort "install" "cannot rename the copies into place in $DEST on $DEVICE ($(last_line "$work/err"))"
fi

# ---- smoke test: the device's own edge-classify opens the model ----------------------------------
on_device "$SMOKE_SCRIPT" "$remote_model" "$remote_classify"
status=$?
check_connection "$status"
if [ "$status" -ne 0 ]; then
    fail "smoke test" "edge-classify --info $remote_model on $DEVICE exited $status ($(last_line "$work/err"))"
fi
cat "$work/out"

# shellcheck disable=SC2086  # split "SIZE SHA256" into two words
set -- $remote_digest
say "OK $DEVICE:$remote_model ($1 bytes, sha256 $2 matches $manifest; edge-classify --info ran)"
