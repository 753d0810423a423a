#!/usr/bin/env bash
# Scale-in drain for a jobpool instance in an Auto Scaling group (installed by the fleet's
# user data as /usr/local/sbin/jobpool-drain, run by jobpool-drain.service).
#
# When the group terminates this instance (scale-in, instance refresh, rolling update),
# it first deregisters it from the target group (deregistration delay) and then holds it
# in Terminating:Wait because of the EC2_INSTANCE_TERMINATING lifecycle hook. This loop
# sees that through the instance metadata item autoscaling/target-lifecycle-state, stops
# jobpool the normal way (SIGTERM: running jobs finish within JOBPOOL_GRACEFUL_TIMEOUT_S,
# queued ones stay in the store) and then lets the termination proceed. If anything here
# fails, the hook's heartbeat timeout ends the wait anyway (DefaultResult CONTINUE).
set -euo pipefail

readonly IMDS=http://169.254.169.254
readonly HOOK_NAME="${JOBPOOL_LIFECYCLE_HOOK:-jobpool-drain}"
readonly SERVICE="${JOBPOOL_SERVICE:-jobpool.service}"
readonly POLL_S="${JOBPOOL_DRAIN_POLL_S:-5}"

log() { printf 'jobpool-drain: %s\n' "$*" >&2; }

# IMDSv2 only (the launch template requires tokens): a fresh token per call is cheap.
imds() {
    local token
    token="$(curl -fsS --max-time 2 -X PUT "$IMDS/latest/api/token" \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')" || return 1
    curl -fsS --max-time 2 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"
}

main() {
    local instance_id region asg state
    until instance_id="$(imds instance-id)" && region="$(imds placement/region)"; do
        sleep "$POLL_S"
    done
    log "watching $instance_id (hook $HOOK_NAME)"
    while true; do
        # 404 until the first transition is recorded: treat as "not terminating".
        state="$(imds autoscaling/target-lifecycle-state 2>/dev/null || true)"
        if [[ "$state" == "Terminated" ]]; then
            break
        fi
        sleep "$POLL_S"
    done

    log "instance is terminating: stopping $SERVICE (graceful)"
    # Blocks until gunicorn has exited, at most the unit's TimeoutStopSec.
    systemctl stop "$SERVICE" || log "systemctl stop $SERVICE failed; continuing"

    asg="$(aws autoscaling describe-auto-scaling-instances --region "$region" \
        --instance-ids "$instance_id" \
        --query 'AutoScalingInstances[0].AutoScalingGroupName' --output text)" || asg=""
    if [[ -z "$asg" || "$asg" == "None" ]]; then
        log "cannot find this instance's Auto Scaling group; the hook times out instead"
        exit 1
    fi
    aws autoscaling complete-lifecycle-action --region "$region" \
        --auto-scaling-group-name "$asg" --lifecycle-hook-name "$HOOK_NAME" \
        --instance-id "$instance_id" --lifecycle-action-result CONTINUE
    log "drained; termination continues"
}

main "$@"
