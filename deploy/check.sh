#!/usr/bin/env bash
# CI checks for deploy/: shell syntax and lint, the CloudFormation template, the systemd
# units, and the values that must agree across files. Exits non-zero if any check fails.
#
#   deploy/check.sh
#
# Needs: bash, python3 with cfn-lint (the repo's .venv is used when present). Optional:
# the shellcheck and systemd-analyze tools (checks needing a missing one are skipped).
set -uo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
cd "$REPO_DIR" || exit 2

TEMPLATE=deploy/aws/jobpool-fleet.yaml
UNIT=deploy/jobpool.service
DRAIN_UNIT=deploy/aws/jobpool-drain.service
ENV_EXAMPLE=deploy/jobpool.env.example
SCRIPTS=(deploy/install.sh deploy/check.sh deploy/aws/jobpool-drain.sh)

# Tools: the repo venv first (cfn-lint lives there), then PATH.
if [[ -x .venv/bin/python ]]; then
    PYTHON=.venv/bin/python
    export PATH="$REPO_DIR/.venv/bin:$PATH"
else
    PYTHON="$(command -v python3 || true)"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
skipped=0
failures=()

# check NAME COMMAND...: run it, show its output indented, record the result.
check() {
    local name="$1" out rc
    shift
    out="$("$@" 2>&1)"
    rc=$?
    if ((rc == 0)); then
        printf 'PASS  %s\n' "$name"
        passed=$((passed + 1))
    else
        printf 'FAIL  %s (exit %d)\n' "$name" "$rc"
        failed=$((failed + 1))
        failures+=("$name")
    fi
    if [[ -n "$out" ]]; then
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
}

skip() {
    printf 'SKIP  %s: %s\n' "$1" "$2"
    skipped=$((skipped + 1))
}

# --- shell ---------------------------------------------------------------------------

# The fleet's user data, as the instance will run it: CloudFormation's ${Param}
# substituted with sample values, so bash and shellcheck see the real script.
render_user_data() {
    "$PYTHON" - "$TEMPLATE" "$1" <<'PY'
import re
import sys

from cfnlint.decode import cfn_yaml

template = cfn_yaml.load(sys.argv[1])
data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
body = data["UserData"]["Fn::Base64"]["Fn::Sub"]
samples = {
    "AWS::Region": "eu-west-1",
    "AWS::StackName": "jobpool-ci",
    "SourceRepoUrl": "https://git.example.com/jobpool.git",
    "SourceRef": "v1.0.0",
    "JobpoolStoreUrl": "redis://redis.example.internal:6379/0",
    "ApiKeysParameterName": "/jobpool/api-keys",
    "GracefulTimeoutSeconds": "30",
    "JobpoolAuth": "on",
    "TargetGroup": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/jobpool/0123456789abcdef",
}
unknown = []

def substitute(match: re.Match[str]) -> str:
    name = match.group(1)
    if name.startswith("!"):
        return "${" + name[1:] + "}"
    if name not in samples:
        unknown.append(name)
    return samples.get(name, "x")

script = re.sub(r"\$\{([^}]+)\}", substitute, body)
if unknown:
    sys.exit(f"user data uses ${{{', '.join(unknown)}}}: add sample values in check.sh")
with open(sys.argv[2], "w") as out:
    out.write(script)
PY
}

for script in "${SCRIPTS[@]}"; do
    check "bash -n $script" bash -n "$script"
done

USER_DATA="$WORK/user-data.sh"
check "render the fleet user data from $TEMPLATE" render_user_data "$USER_DATA"
check "bash -n fleet user data" bash -n "$USER_DATA"

if command -v shellcheck >/dev/null 2>&1; then
    check "shellcheck ${SCRIPTS[*]}" shellcheck -x "${SCRIPTS[@]}"
    check "shellcheck fleet user data" shellcheck -s bash "$USER_DATA"
else
    skip shellcheck "not installed (apt-get install shellcheck)"
fi

# install.sh's argument handling and plan, without touching the machine.
dry_run_local() {
    local out
    out="$(bash deploy/install.sh --dry-run "$REPO_DIR" 2>&1)" || {
        printf '%s\n' "$out"
        return 1
    }
    local want
    for want in 'systemctl enable --now jobpool.service' 'TimeoutStopSec=45' \
        'wait up to 30s for 200 from GET http://127.0.0.1:8000/healthz'; do
        if ! grep -qF "$want" <<<"$out"; then
            printf '%s\n' "$out"
            echo "dry run did not plan: $want"
            return 1
        fi
    done
}
dry_run_url() {
    local out
    out="$(bash deploy/install.sh --dry-run --ref v1.2.3 https://git.example.com/jobpool.git 2>&1)" || {
        printf '%s\n' "$out"
        return 1
    }
    grep -qF 'fetch -q --depth 1 https://git.example.com/jobpool.git v1.2.3' <<<"$out" || {
        printf '%s\n' "$out"
        return 1
    }
}
rejects_bad_args() {
    ! bash deploy/install.sh --dry-run --no-such-flag >/dev/null 2>&1 &&
        ! bash deploy/install.sh --dry-run --ref v1 "$REPO_DIR" >/dev/null 2>&1 &&
        ! bash deploy/install.sh --dry-run /nonexistent/jobpool >/dev/null 2>&1
}
if [[ -r /etc/os-release ]] && grep -Eq '^ID(_LIKE)?=.*(debian|ubuntu|amzn|fedora|rhel)' /etc/os-release; then
    check "install.sh --dry-run (this checkout)" dry_run_local
    check "install.sh --dry-run --ref (git URL)" dry_run_url
    check "install.sh refuses bad arguments" rejects_bad_args
else
    skip "install.sh --dry-run" "not an apt/dnf system"
fi

# --- CloudFormation ------------------------------------------------------------------

if command -v cfn-lint >/dev/null 2>&1; then
    check "cfn-lint $TEMPLATE (errors and warnings)" cfn-lint -- "$TEMPLATE"
else
    check "cfn-lint $TEMPLATE" sh -c 'echo "cfn-lint not found (pip install cfn-lint)"; exit 1'
fi

# --- systemd -------------------------------------------------------------------------

# A copy of a unit whose ExecStart binary exists here, so that verify checks the rest of
# the unit instead of stopping at "not executable". Extra lines (a negative control) can
# be appended to [Service].
unit_copy() {
    local src="$1" dst="$2"
    shift 2
    mkdir -p "$(dirname "$dst")"
    sed -E 's#^ExecStart=[^ ]+#ExecStart=/bin/true#' "$src" >"$dst"
    if (($#)); then
        printf '%s\n' "$@" | sed -i '/^\[Service\]$/r /dev/stdin' "$dst"
    fi
    grep -q '^ExecStart=/bin/true' "$dst"
}

# systemd-analyze verify exits 0 on unknown keys and bad values (it only logs them), so
# any line about the unit counts as a failure.
verify_unit() {
    local unit="$1" out rc
    out="$(systemd-analyze verify --man=no "$unit" 2>&1)"
    rc=$?
    [[ -z "$out" ]] || printf '%s\n' "$out"
    ((rc == 0)) && ! grep -q "$(basename "$unit")" <<<"$out"
}

# Proves verify_unit can fail here: a unit with a misspelt key and a bad value must fail.
verify_detects_errors() {
    local bad="$WORK/negative/jobpool.service"
    unit_copy "$UNIT" "$bad" 'NoSuchSetting=1' 'KillMode=sometimes' || return 1
    if verify_unit "$bad" >/dev/null; then
        echo "systemd-analyze verify accepted a broken unit: the verify checks would be meaningless"
        return 1
    fi
}

security_score() {
    # Exposure 0-100 (shown as 0.0-10.0); the unit scores about 1.9 ("OK"). Fails above 3.0.
    systemd-analyze security --offline=true --threshold=30 --no-pager "$1" | tail -n 1
    return "${PIPESTATUS[0]}"
}

if command -v systemd-analyze >/dev/null 2>&1; then
    unit_copy "$UNIT" "$WORK/units/jobpool.service"
    unit_copy "$DRAIN_UNIT" "$WORK/units/jobpool-drain.service"
    check "systemd-analyze verify catches a broken unit (negative control)" verify_detects_errors
    check "systemd-analyze verify $UNIT (ExecStart -> /bin/true)" verify_unit "$WORK/units/jobpool.service"
    check "systemd-analyze verify $DRAIN_UNIT (ExecStart -> /bin/true)" verify_unit "$WORK/units/jobpool-drain.service"
    check "systemd-analyze security $UNIT (exposure <= 3.0)" security_score "$WORK/units/jobpool.service"
else
    skip "systemd-analyze verify" "systemd-analyze not installed"
fi

# --- values that must agree ----------------------------------------------------------

consistency() {
    "$PYTHON" - "$TEMPLATE" "$UNIT" "$ENV_EXAMPLE" "$USER_DATA" <<'PY'
import re
import sys

from cfnlint.decode import cfn_yaml

template_path, unit_path, env_path, user_data_path = sys.argv[1:5]
problems = []


def expect(ok: bool, what: str) -> None:
    print(("ok    " if ok else "WRONG ") + what)
    if not ok:
        problems.append(what)


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(s|sec)?", value.strip())
    if not match:
        raise ValueError(f"{value!r}: only plain seconds are understood here")
    return int(match.group(1))


unit = {}
for line in open(unit_path):
    if "=" in line and not line.lstrip().startswith("#"):
        key, _, value = line.strip().partition("=")
        unit.setdefault(key, value)

env = {}
env_mentions = set()
for line in open(env_path):
    match = re.match(r"^\s*(#\s*)?(JOBPOOL_[A-Z0-9_]+)=(.*)$", line)
    if match:
        env_mentions.add(match.group(2))
        if not match.group(1):
            env[match.group(2)] = match.group(3).strip()

required = [
    "JOBPOOL_BIND", "JOBPOOL_WORKERS", "JOBPOOL_STATE_DIR", "JOBPOOL_GRACEFUL_TIMEOUT_S",
    "JOBPOOL_KEEPALIVE_S", "JOBPOOL_CPU_WORKERS", "JOBPOOL_AUTH", "JOBPOOL_API_KEYS_FILE",
    "JOBPOOL_STORE_URL", "JOBPOOL_LOG_LEVEL", "JOBPOOL_METRICS_BIND",
]
missing = [name for name in required if name not in env_mentions]
expect(not missing, f"{env_path} documents every deploy setting (missing: {missing or 'none'})")
expect(env.get("JOBPOOL_BIND") == "0.0.0.0:8000", "env example binds 0.0.0.0:8000 (behind the ALB)")
expect(env.get("JOBPOOL_STATE_DIR") == "/var/lib/jobpool", "env example state dir is /var/lib/jobpool")
expect(env.get("JOBPOOL_METRICS_BIND", "").startswith("127.0.0.1:"), "metrics bind is loopback only")

graceful = int(env["JOBPOOL_GRACEFUL_TIMEOUT_S"])
stop = seconds(unit["TimeoutStopSec"])
expect(stop > graceful, f"unit TimeoutStopSec ({stop}) > graceful timeout ({graceful})")
expect(unit.get("KillMode") == "mixed", "unit KillMode=mixed (SIGTERM to the arbiter only)")
state_dir = env["JOBPOOL_STATE_DIR"]
expect(unit.get("ReadWritePaths") == state_dir, f"unit ReadWritePaths = {state_dir}")
expect(unit.get("StateDirectory") == state_dir.removeprefix("/var/lib/"), "unit StateDirectory matches")

t = cfn_yaml.load(template_path)
params = t["Parameters"]
res = t["Resources"]
tg = res["TargetGroup"]["Properties"]
tg_attrs = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
expect(tg["HealthCheckPath"] == "/healthz", "target group health check on /healthz")
expect(tg["Port"] == 8000, "target group port 8000 = JOBPOOL_BIND port")
expect(tg_attrs.get("deregistration_delay.timeout_seconds") == {"Ref": "GracefulTimeoutSeconds"},
       "deregistration delay = GracefulTimeoutSeconds")
expect(int(params["GracefulTimeoutSeconds"]["Default"]) == graceful,
       "GracefulTimeoutSeconds default = env example graceful timeout")
lb_attrs = {a["Key"]: a["Value"] for a in res["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
idle = int(lb_attrs["idle_timeout.timeout_seconds"])
expect(int(env["JOBPOOL_KEEPALIVE_S"]) > idle, f"keep-alive ({env['JOBPOOL_KEEPALIVE_S']}) > ALB idle timeout ({idle})")
meta = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["MetadataOptions"]
expect(meta["HttpTokens"] == "required" and meta["HttpPutResponseHopLimit"] == 1, "IMDSv2 required, hop limit 1")
hooks = {h["LifecycleTransition"]: h for h in res["AutoScalingGroup"]["Properties"]["LifecycleHookSpecificationList"]}
term = hooks.get("autoscaling:EC2_INSTANCE_TERMINATING")
expect(term is not None, "termination lifecycle hook present")
if term:
    max_graceful = int(params["GracefulTimeoutSeconds"]["MaxValue"])
    expect(term["HeartbeatTimeout"] > max_graceful + (stop - graceful),
           f"termination hook heartbeat ({term['HeartbeatTimeout']}) covers the longest stop ({max_graceful}+{stop - graceful})")
    drain = open("deploy/aws/jobpool-drain.service").read()
    expect(f"JOBPOOL_LIFECYCLE_HOOK={term['LifecycleHookName']}" in drain, "drain unit names the termination hook")
launch = hooks.get("autoscaling:EC2_INSTANCE_LAUNCHING")
user_data = open(user_data_path).read()
expect(launch is not None and launch["LifecycleHookName"] in user_data, "user data completes the launch hook")
ud_env = set(re.findall(r"^(JOBPOOL_[A-Z0-9_]+)=", user_data, re.M)) | set(re.findall(r"\"(JOBPOOL_[A-Z0-9_]+)=", user_data))
missing_ud = [name for name in required if name not in ud_env]
expect(not missing_ud, f"user data writes every deploy setting (missing: {missing_ud or 'none'})")
expect("JOBPOOL_BIND=0.0.0.0:8000" in user_data, "user data binds 0.0.0.0:8000")
expect("deploy/install.sh" in user_data, "user data installs with deploy/install.sh")
sys.exit(1 if problems else 0)
PY
}
if [[ -s "$USER_DATA" ]]; then
    check "settings agree across unit, env example, template and user data" consistency
else
    check "settings agree across unit, env example, template and user data" sh -c 'echo "no rendered user data"; exit 1'
fi

# --- summary -------------------------------------------------------------------------

echo
if ((failed)); then
    printf 'deploy/check.sh: FAILED: %d of %d checks (%d skipped):\n' "$failed" "$((passed + failed))" "$skipped"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
printf 'deploy/check.sh: OK: all %d checks (%d skipped)\n' "$passed" "$skipped"
