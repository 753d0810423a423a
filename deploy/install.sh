#!/usr/bin/env bash
# Install or upgrade jobpool on one host as a systemd service.
#
#   sudo deploy/install.sh [--dry-run] [--ref REF] [SOURCE]
#
# SOURCE is a path to a jobpool checkout or a git URL (https://, ssh://, git@host:...,
# file://). Default: the checkout this script lives in. --ref picks a branch, tag or commit
# of a git URL (default: the remote's default branch).
#
# Supported: Ubuntu 22.04 / 24.04 and Debian 12 (apt), Amazon Linux 2023 (dnf).
# Safe to run again: it upgrades the code and the venv, keeps /etc/jobpool/jobpool.env,
# restarts the service and waits for GET /healthz on the host itself.
#
# Environment: JOBPOOL_PREFIX (default /opt/jobpool; the unit expects /opt/jobpool),
# JOBPOOL_HEALTH_TIMEOUT_S (default 30).
set -euo pipefail

readonly PREFIX="${JOBPOOL_PREFIX:-/opt/jobpool}"
readonly SRC_DIR="$PREFIX/src"
readonly VENV="$PREFIX/venv"
readonly ETC_DIR=/etc/jobpool
readonly ENV_FILE="$ETC_DIR/jobpool.env"
readonly UNIT_NAME=jobpool.service
readonly UNIT_DST="/etc/systemd/system/$UNIT_NAME"
readonly DROPIN_DIR="/etc/systemd/system/$UNIT_NAME.d"
readonly SERVICE_USER=jobpool
readonly STATE_DIR=/var/lib/jobpool
readonly HEALTH_TIMEOUT_S="${JOBPOOL_HEALTH_TIMEOUT_S:-30}"
# Graceful timeout + this = systemd's TimeoutStopSec (pool teardown, arbiter exit).
readonly STOP_MARGIN_S=15

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

DRY_RUN=0
REF=""
SOURCE=""

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

# Run a command, or only print it under --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '[dry-run]'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# write_file PATH MODE OWNER:GROUP  (content on stdin); prints it under --dry-run.
write_file() {
    local path="$1" mode="$2" owner="$3" tmp
    if ((DRY_RUN)); then
        printf '[dry-run] write %s (mode %s, %s):\n' "$path" "$mode" "$owner"
        sed 's/^/[dry-run]   | /'
        return
    fi
    tmp="$(mktemp "$path.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
}

# env_get KEY FILE: the last KEY=value of an env file, quotes stripped; empty if absent.
env_get() {
    local key="$1" file="$2" value
    [[ -r "$file" ]] || return 0
    value="$(sed -n "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*//p" "$file" | tail -n 1)"
    value="${value%"${value##*[![:space:]]}"}"
    if [[ "$value" == \"*\" || "$value" == \'*\' ]]; then
        value="${value:1:${#value}-2}"
    fi
    printf '%s' "$value"
}

is_git_url() {
    [[ "$1" =~ ^(https?|ssh|git|file):// || "$1" =~ ^[A-Za-z0-9._-]+@[^:/]+: ]]
}

parse_args() {
    while (($#)); do
        case "$1" in
            --dry-run | -n) DRY_RUN=1 ;;
            --ref)
                (($# >= 2)) || die "--ref needs a value"
                REF="$2"
                shift
                ;;
            --ref=*) REF="${1#--ref=}" ;;
            -h | --help)
                usage
                exit 0
                ;;
            --)
                shift
                break
                ;;
            -*) die "unknown option: $1 (see --help)" ;;
            *)
                [[ -z "$SOURCE" ]] || die "only one SOURCE may be given"
                SOURCE="$1"
                ;;
        esac
        shift
    done
    if (($#)); then
        [[ -z "$SOURCE" && $# -eq 1 ]] || die "only one SOURCE may be given"
        SOURCE="$1"
    fi
    if [[ -z "$SOURCE" ]]; then
        SOURCE="$(cd "$SCRIPT_DIR/.." && pwd)"
    fi
    if [[ -n "$REF" ]] && ! is_git_url "$SOURCE"; then
        die "--ref only applies to a git URL SOURCE"
    fi
    [[ "$HEALTH_TIMEOUT_S" =~ ^[0-9]+$ ]] || die "JOBPOOL_HEALTH_TIMEOUT_S must be an integer"
}

# --- packages ------------------------------------------------------------------------

PKG_MGR=""

detect_os() {
    local id="" id_like="" version_id=""
    [[ -r /etc/os-release ]] || die "no /etc/os-release: unsupported system"
    # shellcheck disable=SC1091
    id="$(. /etc/os-release && printf '%s' "${ID:-}")"
    # shellcheck disable=SC1091
    id_like="$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")"
    # shellcheck disable=SC1091
    version_id="$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")"
    case "$id" in
        ubuntu | debian) PKG_MGR=apt ;;
        amzn)
            [[ "$version_id" == 2023* ]] || warn "Amazon Linux $version_id: only 2023 is supported"
            PKG_MGR=dnf
            ;;
        *)
            case " $id_like " in
                *" debian "* | *" ubuntu "*) PKG_MGR=apt ;;
                *" fedora "* | *" rhel "*) PKG_MGR=dnf ;;
                *) die "unsupported system '$id' (need apt or dnf)" ;;
            esac
            ;;
    esac
    log "system: $id $version_id ($PKG_MGR)"
}

# A Python >= 3.11 that can create a venv with pip in it; prints its real path. One under
# /root or /home (pyenv, a user's build) is skipped: the venv links to it, and the unit's
# ProtectHome=yes hides those trees from the service.
find_python() {
    local cand exe
    for cand in python3.13 python3.12 python3.11 python3; do
        command -v "$cand" >/dev/null 2>&1 || continue
        exe="$("$cand" -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null)" || continue
        case "$exe" in /root/* | /home/*) continue ;; esac
        if "$exe" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
            "$exe" -c 'import ensurepip, venv' 2>/dev/null; then
            printf '%s\n' "$exe"
            return 0
        fi
    done
    return 1
}

# Whether the distribution's own python3 is >= 3.11 (only venv support may be missing).
python3_is_new_enough() {
    [[ -x /usr/bin/python3 ]] &&
        /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

# Python headers present for this interpreter (building C extensions needs them).
has_python_headers() {
    "$1" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null
}

APT_UPDATED=0

pkg_install() {
    log "packages: installing $*"
    case "$PKG_MGR" in
        apt)
            if ((!APT_UPDATED)); then
                run env DEBIAN_FRONTEND=noninteractive apt-get update -q
                APT_UPDATED=1
            fi
            run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
            ;;
        dnf) run dnf install -y -q "$@" ;;
    esac
}

install_packages() {
    local pkgs=() py minor dev_pkg=""
    # 1. Python >= 3.11 with venv, and git.
    if ! find_python >/dev/null; then
        case "$PKG_MGR" in
            # Ubuntu 24.04 / Debian 12: python3 is 3.12 / 3.11, only venv (ensurepip) is
            # missing. Ubuntu 22.04: python3 is 3.10, so the separate python3.11 package.
            apt) if python3_is_new_enough; then
                pkgs+=(python3 python3-venv) dev_pkg=python3-dev
            else
                pkgs+=(python3.11 python3.11-venv) dev_pkg=python3.11-dev
            fi ;;
            # Amazon Linux 2023: python3 is 3.9; python3.11 is packaged beside it.
            dnf) if python3_is_new_enough; then
                pkgs+=(python3 python3-pip) dev_pkg=python3-devel
            else
                pkgs+=(python3.11 python3.11-pip) dev_pkg=python3.11-devel
            fi ;;
        esac
    fi
    command -v git >/dev/null 2>&1 || pkgs+=(git)
    if ((${#pkgs[@]})); then
        pkg_install "${pkgs[@]}"
    fi

    # 2. A C compiler and the headers of that Python: some pinned dependencies (the
    # gunicorn_h1c parser) are published as source only and are compiled by pip.
    pkgs=()
    if py="$(find_python)"; then
        minor="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        if ! has_python_headers "$py"; then
            case "$PKG_MGR" in
                apt) pkgs+=("python$minor-dev") ;;
                dnf) pkgs+=("python$minor-devel") ;;
            esac
        fi
    elif ((DRY_RUN)) && [[ -n "$dev_pkg" ]]; then
        pkgs+=("$dev_pkg") # what step 1 would have installed
    fi
    if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
        case "$PKG_MGR" in
            apt) pkgs+=(gcc libc6-dev) ;;
            dnf) pkgs+=(gcc) ;;
        esac
    fi
    if ((${#pkgs[@]})); then
        pkg_install "${pkgs[@]}"
    else
        log "packages: python >= 3.11, git, compiler and headers already present"
    fi
}

# --- user ----------------------------------------------------------------------------

ensure_user() {
    if getent passwd "$SERVICE_USER" >/dev/null; then
        log "user: $SERVICE_USER exists"
        return
    fi
    local nologin group_opt=(--user-group)
    nologin="$(command -v nologin || echo /sbin/nologin)"
    if getent group "$SERVICE_USER" >/dev/null; then
        group_opt=(--gid "$SERVICE_USER")
    fi
    log "user: creating system user $SERVICE_USER (home $STATE_DIR, no login)"
    # Home = the state dir: gunicorn's default control socket (~/.gunicorn) is then
    # writable under the unit's ProtectSystem=strict / ProtectHome=yes.
    run useradd --system "${group_opt[@]}" --home-dir "$STATE_DIR" --no-create-home \
        --shell "$nologin" --comment "jobpool service" "$SERVICE_USER"
}

# --- source --------------------------------------------------------------------------

# STAGE: the tree being installed (read deploy/ files and pip install from it).
# STAGE_TMP: a temporary dir this run created, removed on exit unless moved into place.
STAGE=""
STAGE_TMP=""

cleanup() {
    if [[ -n "$STAGE_TMP" && -d "$STAGE_TMP" ]]; then
        rm -rf -- "$STAGE_TMP"
    fi
}

check_tree() {
    local dir="$1" f
    for f in pyproject.toml service deploy/jobpool.service deploy/jobpool.env.example; do
        [[ -e "$dir/$f" ]] || die "$dir does not look like a jobpool checkout (no $f)"
    done
    if [[ ! -e "$dir/gunicorn.conf.py" ]]; then
        if ((DRY_RUN)); then
            warn "$dir has no gunicorn.conf.py: the service could not start"
        else
            die "$dir has no gunicorn.conf.py: the unit runs 'gunicorn -c gunicorn.conf.py'"
        fi
    fi
}

# Puts the new source in $STAGE (a fresh dir next to $SRC_DIR), or sets STAGE=$SRC_DIR
# when SOURCE already is the installed tree.
stage_source() {
    run install -d -m 0755 -o root -g root "$PREFIX"
    if is_git_url "$SOURCE"; then
        log "source: git $SOURCE ${REF:+(ref $REF)}"
        if ((DRY_RUN)); then
            STAGE="$PREFIX/.src.new"
            run git init -q "$STAGE"
            run git -C "$STAGE" fetch -q --depth 1 "$SOURCE" "${REF:-HEAD}"
            run git -C "$STAGE" checkout -q --detach FETCH_HEAD
            check_tree "$SCRIPT_DIR/.."
            return
        fi
        STAGE_TMP="$(mktemp -d "$PREFIX/.src.XXXXXX")"
        STAGE="$STAGE_TMP"
        git init -q "$STAGE"
        # fetch + checkout FETCH_HEAD accepts a branch, a tag or a commit id alike.
        git -C "$STAGE" fetch -q --depth 1 "$SOURCE" "${REF:-HEAD}"
        git -C "$STAGE" -c advice.detachedHead=false checkout -q --detach FETCH_HEAD
        log "source: commit $(git -C "$STAGE" rev-parse HEAD)"
    else
        [[ -d "$SOURCE" ]] || die "SOURCE '$SOURCE' is neither a directory nor a git URL"
        local src
        src="$(cd "$SOURCE" && pwd -P)"
        check_tree "$src"
        if [[ -d "$SRC_DIR" && "$src" == "$(cd "$SRC_DIR" && pwd -P)" ]]; then
            log "source: $src is the installed tree; using it in place"
            STAGE="$SRC_DIR"
            return
        fi
        log "source: copying $src"
        if ((DRY_RUN)); then
            STAGE="$PREFIX/.src.new"
            printf '[dry-run] copy %q -> %q (without .git, .venv, var/, build output, caches)\n' "$src" "$STAGE"
            return
        fi
        STAGE_TMP="$(mktemp -d "$PREFIX/.src.XXXXXX")"
        STAGE="$STAGE_TMP"
        # tar, not rsync: present on every supported system. Leaves out VCS data, local
        # venvs, local state and build/cache output of the checkout.
        tar -C "$src" \
            --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./var \
            --exclude=./build --exclude=./dist --exclude='*.egg-info' \
            --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
            --exclude=.ruff_cache --exclude=.hypothesis \
            -cf - . | tar -C "$STAGE" --no-same-owner -xf -
    fi
    check_tree "$STAGE"
    # Code is root-owned and read-only for the service; mktemp made the dir 0700.
    chown -R root:root "$STAGE"
    chmod -R u+rwX,go+rX,go-w "$STAGE"
}

# Swap the staged tree into place (after pip succeeded, so a failed upgrade leaves the
# old tree in place).
activate_source() {
    [[ "$STAGE" == "$SRC_DIR" ]] && return
    log "source: installing into $SRC_DIR"
    if ((DRY_RUN)); then
        run mv "$STAGE" "$SRC_DIR"
        return
    fi
    local old=""
    if [[ -e "$SRC_DIR" ]]; then
        old="$PREFIX/.src.old.$$"
        mv "$SRC_DIR" "$old"
    fi
    mv "$STAGE" "$SRC_DIR"
    STAGE_TMP=""
    [[ -z "$old" ]] || rm -rf -- "$old"
}

# --- venv ----------------------------------------------------------------------------

install_venv() {
    local py
    if ! py="$(find_python)"; then
        ((DRY_RUN)) || die "no Python >= 3.11 with venv support after installing packages"
        py=python3.11
    fi
    if [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        log "venv: reusing $VENV ($("$VENV/bin/python" -V 2>&1))"
    else
        # Missing, broken (its Python was removed) or too old: build it anew.
        log "venv: creating $VENV with $py"
        run rm -rf "$VENV"
        run "$py" -m venv "$VENV"
    fi
    run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    # A local directory is always rebuilt and reinstalled by pip, so an upgrade with an
    # unchanged version number still installs the new code.
    log "venv: pip install $STAGE"
    run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$STAGE"
}

# --- configuration -------------------------------------------------------------------

# The env file to read settings from: the installed one, else the example that will be.
env_source() {
    if [[ -r "$ENV_FILE" ]]; then
        printf '%s' "$ENV_FILE"
    elif [[ -r "$STAGE/deploy/jobpool.env.example" ]]; then
        printf '%s' "$STAGE/deploy/jobpool.env.example"
    else
        printf '%s' "$SCRIPT_DIR/jobpool.env.example"
    fi
}

install_config() {
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC_DIR"
    if [[ -e "$ENV_FILE" ]]; then
        log "config: keeping existing $ENV_FILE"
    else
        log "config: installing $ENV_FILE from deploy/jobpool.env.example (edit it, then restart)"
        # root only: systemd reads it as root, and it may hold a store URL with a password.
        run install -m 0600 -o root -g root "$STAGE/deploy/jobpool.env.example" "$ENV_FILE"
    fi

    local envf auth keys state_dir
    envf="$(env_source)"
    auth="$(env_get JOBPOOL_AUTH "$envf")"
    keys="$(env_get JOBPOOL_API_KEYS_FILE "$envf")"
    state_dir="$(env_get JOBPOOL_STATE_DIR "$envf")"
    if [[ -n "$keys" && -e "$keys" ]]; then
        # Written by an operator or by the fleet's user data as root: make sure the service
        # user can read it (content is left alone).
        log "config: keeping $keys (owner root:$SERVICE_USER, mode 0640)"
        run chown "root:$SERVICE_USER" "$keys"
        run chmod 0640 "$keys"
    elif [[ -n "$keys" ]]; then
        log "config: creating empty API keys file $keys"
        run install -m 0640 -o root -g "$SERVICE_USER" /dev/null "$keys"
        case "${auth,,}" in
            on | true | 1 | yes) warn "JOBPOOL_AUTH=$auth and $keys is empty: jobpool refuses to start until keys are added (python -m service.keys new NAME)" ;;
        esac
    fi
    if [[ -n "$state_dir" && "${state_dir%/}" != "$STATE_DIR" ]]; then
        warn "JOBPOOL_STATE_DIR=$state_dir but the unit only makes $STATE_DIR writable; add ReadWritePaths=$state_dir in a drop-in (systemctl edit jobpool)"
    fi
}

install_unit() {
    local envf graceful
    envf="$(env_source)"
    graceful="$(env_get JOBPOOL_GRACEFUL_TIMEOUT_S "$envf")"
    graceful="${graceful:-30}"
    [[ "$graceful" =~ ^[0-9]+$ ]] || die "JOBPOOL_GRACEFUL_TIMEOUT_S='$graceful' in $envf is not an integer"

    log "systemd: installing $UNIT_DST"
    run install -m 0644 -o root -g root "$STAGE/deploy/jobpool.service" "$UNIT_DST"
    run install -d -m 0755 "$DROPIN_DIR"
    # systemd must wait longer than gunicorn's graceful shutdown before it SIGKILLs.
    write_file "$DROPIN_DIR/10-stop-timeout.conf" 0644 root:root <<EOF
# Written by deploy/install.sh from JOBPOOL_GRACEFUL_TIMEOUT_S=$graceful (+ ${STOP_MARGIN_S} s).
[Service]
TimeoutStopSec=$((graceful + STOP_MARGIN_S))
EOF
    run systemctl daemon-reload
}

start_service() {
    # A previous crash loop may have hit the start limit; clear it so start works again.
    if ((DRY_RUN)); then
        run systemctl reset-failed "$UNIT_NAME"
    else
        systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    if ((!DRY_RUN)) && systemctl is-active --quiet "$UNIT_NAME"; then
        log "systemd: restarting $UNIT_NAME (new code)"
        run systemctl enable --quiet "$UNIT_NAME"
        run systemctl restart "$UNIT_NAME"
    else
        log "systemd: enable --now $UNIT_NAME"
        run systemctl enable --now "$UNIT_NAME"
    fi
}

# --- health --------------------------------------------------------------------------

health_url() {
    local bind host port
    bind="$(env_get JOBPOOL_BIND "$(env_source)")"
    bind="${bind:-127.0.0.1:8000}"
    host="${bind%:*}"
    port="${bind##*:}"
    case "$host" in
        0.0.0.0 | '*' | '') host=127.0.0.1 ;;
        '[::]' | '::') host='[::1]' ;;
    esac
    printf 'http://%s:%s/healthz' "$host" "$port"
}

probe() {
    # No proxy: the check must reach this host, whatever http_proxy says.
    "$VENV/bin/python" - "$1" <<'PY'
import sys
import urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

wait_healthy() {
    local url deadline
    url="$(health_url)"
    if ((DRY_RUN)); then
        printf '[dry-run] wait up to %ss for 200 from GET %s\n' "$HEALTH_TIMEOUT_S" "$url"
        return
    fi
    log "health: waiting up to ${HEALTH_TIMEOUT_S}s for $url"
    deadline=$((SECONDS + HEALTH_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if probe "$url"; then
            log "health: $url answers 200; jobpool is running"
            if probe "${url%/healthz}/readyz"; then
                log "health: /readyz is ready"
            else
                warn "/readyz is not ready yet (the load balancer checks /healthz)"
            fi
            return 0
        fi
        if systemctl is-failed --quiet "$UNIT_NAME"; then
            break
        fi
        sleep 1
    done
    systemctl status --no-pager --lines=0 "$UNIT_NAME" >&2 || true
    journalctl --unit "$UNIT_NAME" --no-pager --lines=40 >&2 || true
    die "jobpool did not answer $url within ${HEALTH_TIMEOUT_S}s (see the log above)"
}

# --- main ----------------------------------------------------------------------------

main() {
    parse_args "$@"
    if ((DRY_RUN)); then
        log "dry run: nothing is changed; commands are printed"
    else
        ((EUID == 0)) || die "run as root (or use --dry-run)"
        [[ -d /run/systemd/system ]] || die "systemd is not running on this host"
        # One install at a time (user data and an operator, say).
        exec 9>/run/jobpool-install.lock
        flock -n 9 || die "another install.sh is running"
        trap cleanup EXIT
    fi
    detect_os
    install_packages
    ensure_user
    stage_source
    install_venv
    activate_source
    # From here on the installed tree is the one to read deploy/ files from.
    STAGE="$SRC_DIR"
    install_config
    install_unit
    start_service
    wait_healthy
    log "done: $SRC_DIR, venv $VENV, config $ENV_FILE, unit $UNIT_DST"
}

# Run unless sourced (sourcing lets a test call single steps).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
